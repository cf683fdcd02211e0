/**
 * The control socket: a Unix socket a run listens on (`run --control PATH`,
 * the metrics endpoint's sibling) for the operator's commands, so a guest a
 * `pause` verdict parked can be looked at and let go from another shell
 * (`guardvisor guests`, `guardvisor resume`). One JSON line in, one JSON line
 * out. The socket file is made only for its owner (mode 0600), and every
 * request is checked: it comes from outside the run.
 */
import { chmodSync, existsSync, lstatSync, unlinkSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { z } from "zod";
import { configError, GuardvisorError } from "../errors.js";
import { guestName } from "../names.js";

export type GuestState = "running" | "paused" | "stopped";

/** What the run offers the socket. */
export interface ControlTarget {
  guests(): { guest: number; state: GuestState; detail?: string }[];
  resume(guest: number): boolean;
}

const requestSchema = z.discriminatedUnion("op", [
  z.strictObject({ op: z.literal("guests") }),
  z.strictObject({ op: z.literal("resume"), guest: z.string().regex(/^guest\d{1,3}$/) }),
]);
export type ControlRequest = z.infer<typeof requestSchema>;

export type ControlReply =
  | { ok: true; guests: { name: string; state: GuestState; detail?: string }[] }
  | { ok: false; error: string };

/** The longest request line taken (a request is a few dozen bytes). */
const MAX_REQUEST = 1024;

export function answer(target: ControlTarget, line: string): ControlReply {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return { ok: false, error: "not JSON: send one object per line" };
  }
  const r = requestSchema.safeParse(parsed);
  if (!r.success) return { ok: false, error: `bad request: ${r.error.issues[0]?.message ?? "invalid"}` };
  const list = () =>
    target.guests().map((x) => ({
      name: guestName(x.guest),
      state: x.state,
      ...(x.detail === undefined ? {} : { detail: x.detail }),
    }));
  if (r.data.op === "guests") return { ok: true, guests: list() };
  const g = Number(r.data.guest.slice("guest".length));
  const known = target.guests().find((x) => x.guest === g);
  if (!known) return { ok: false, error: `no ${r.data.guest} in this run` };
  if (!target.resume(g)) return { ok: false, error: `${r.data.guest} is ${known.state}, not paused` };
  return { ok: true, guests: list() };
}

export interface ControlServer {
  path: string;
  close(): Promise<void>;
}

/** Listen on `path` (a stale socket file there is replaced; any other file is an error). */
export async function startControlServer(path: string, target: ControlTarget): Promise<ControlServer> {
  if (existsSync(path)) {
    if (!lstatSync(path).isSocket()) throw configError("--control", `${path}: exists and is not a socket`);
    if (await answersAt(path)) throw configError("--control", `${path}: another run is listening there`);
    unlinkSync(path);
  }
  const open = new Set<Socket>();
  const server: Server = createServer((socket: Socket) => {
    // Auxiliary: an operator's connection never holds the process, and close drops it.
    socket.unref();
    open.add(socket);
    socket.on("close", () => open.delete(socket));
    let buf = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_REQUEST && !buf.includes("\n")) {
        socket.end(`${JSON.stringify({ ok: false, error: "request too long" })}\n`);
        return;
      }
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        socket.write(`${JSON.stringify(answer(target, line))}\n`);
      }
    });
    socket.on("error", () => socket.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) =>
      reject(configError("--control", `${path}: cannot listen: ${e.code ?? e.message}`)),
    );
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600);
  server.unref();
  let closing: Promise<void> | undefined;
  return {
    path,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of open) s.destroy();
      });
      return closing;
    },
  };
}

/** Is a run answering on `path`? */
async function answersAt(path: string): Promise<boolean> {
  try {
    await request(path, { op: "guests" }, 1000);
    return true;
  } catch {
    return false;
  }
}

/** Send one request to the run listening on `path`; its reply. */
export function request(path: string, req: ControlRequest, timeoutMs = 5000): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const fail = (why: string) => {
      socket.destroy();
      reject(new GuardvisorError("CONTROL_UNAVAILABLE", `${path}: ${why}`));
    };
    const socket = createConnection(path);
    let buf = "";
    socket.setEncoding("utf8");
    socket.setTimeout(timeoutMs, () => fail("no answer"));
    socket.on("error", (e: NodeJS.ErrnoException) => fail(`no run is listening (${e.code ?? e.message})`));
    socket.on("connect", () => socket.write(`${JSON.stringify(req)}\n`));
    socket.on("data", (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf("\n");
      if (nl < 0) {
        if (buf.length > 1 << 20) fail("answer too long");
        return;
      }
      socket.end();
      try {
        resolve(JSON.parse(buf.slice(0, nl)) as ControlReply);
      } catch {
        fail("the answer is not JSON");
      }
    });
  });
}
