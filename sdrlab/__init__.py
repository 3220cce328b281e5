"""sdrlab"""
