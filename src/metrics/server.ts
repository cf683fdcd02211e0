/**
 * The metrics endpoint: `GET /metrics` on 127.0.0.1 only, in the Prometheus
 * text format. Anything else is 404. The server never keeps the process
 * alive: it and its connections are unreferenced while open, and close drops
 * the connections.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { configError, type GuardvisorError } from "../errors.js";
import { logFor } from "../log.js";
import type { Metrics } from "./metrics.js";

export const METRICS_HOST = "127.0.0.1";
export const METRICS_PATH = "/metrics";

export interface MetricsServer {
  /** `http://127.0.0.1:PORT/metrics`, with the port actually bound. */
  url: string;
  port: number;
  close(): Promise<void>;
}

/** A port for `--metrics-port`: a whole number 0..65535 (0: any free port). */
export function validateMetricsPort(port: unknown): number {
  if (typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw configError("--metrics-port", `${String(port)}: must be a port number 0..65535 (0: any free port)`);
  }
  return port;
}

function listenError(port: number, e: NodeJS.ErrnoException): GuardvisorError {
  switch (e.code) {
    case "EADDRINUSE":
      return configError("--metrics-port", `${port}: already in use on ${METRICS_HOST}`);
    case "EACCES":
      return configError("--metrics-port", `${port}: not permitted (ports below 1024 need privileges)`);
    default:
      return configError("--metrics-port", `${port}: cannot listen on ${METRICS_HOST}: ${e.code ?? e.message}`);
  }
}

/** Serve `metrics` on 127.0.0.1:`port` until closed. */
export async function startMetricsServer(metrics: Metrics, port: number): Promise<MetricsServer> {
  validateMetricsPort(port);
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? "").split("?")[0];
    if (req.method !== "GET" || path !== METRICS_PATH) {
      res.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end("not found: try GET /metrics\n");
      return;
    }
    metrics.text().then(
      (body) => res.writeHead(200, { "content-type": metrics.contentType }).end(body),
      (e: unknown) =>
        res
          .writeHead(500, { "content-type": "text/plain; charset=utf-8" })
          .end(`metrics failed: ${e instanceof Error ? e.message : String(e)}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => reject(listenError(port, e));
    server.once("error", onError);
    server.listen({ host: METRICS_HOST, port, exclusive: true }, () => {
      server.off("error", onError);
      resolve();
    });
  });
  server.on("error", (e) => logFor("metrics").warn({ err: e }, "metrics server error"));
  // Auxiliary: neither the listener nor a scraper's kept-alive connection holds the process.
  server.unref();
  server.on("connection", (socket) => socket.unref());
  const bound = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${METRICS_HOST}:${bound}${METRICS_PATH}`,
    port: bound,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
