/**
 * One run of the lab: boot the emulated x86-64 machine (QEMU, TCG with SVM)
 * with Debian's kernel and KVM, run one command in the host's root at the
 * same working directory, stream its stdout and stderr back over
 * virtio-serial ports, and return its exit code. The emulator dies with this
 * process (parent-death signal), on a timeout, and on Ctrl-C.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuardvisorError } from "../errors.js";
import { packageRoot } from "../kvm/native.js";
import { LAB_PORTS, labInitramfs } from "./initramfs.js";
import { findLabInputs, type LabInputs } from "./inputs.js";

export type TcgMode = "multi" | "single";
export const TCG_MODES: readonly TcgMode[] = ["multi", "single"];

export interface LabRunOptions {
  command: readonly string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Stop the lab after this long (default: no limit). */
  timeoutMs?: number;
  /** TCG threading (default GV_LAB_TCG or "multi"). */
  tcg?: TcgMode;
  /** Emulated RAM in MiB (default 8192). */
  memMiB?: number;
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
}

export interface LabRunResult {
  exitCode: number;
  /** The lab's time scale (how many times slower than this host it ran the calibration workload). */
  scale: number;
  /** From spawning the emulator to the command starting, in ms. */
  bootMs: number;
  totalMs: number;
  tcg: TcgMode;
}

/** Where the lab keeps what it builds (build/lab under the package root). */
export function labCacheDir(): string {
  return process.env.GV_LAB_CACHE || join(packageRoot(), "build", "lab");
}

export function defaultTcgMode(): TcgMode {
  const v = process.env.GV_LAB_TCG;
  if (v === undefined || v === "") return "multi";
  if (v === "multi" || v === "single") return v;
  throw new GuardvisorError("CONFIG_INVALID", `GV_LAB_TCG: must be multi or single, got ${JSON.stringify(v)}`);
}

/** Variables not carried into the lab: they describe this host's process, or are set by the lab itself. */
const ENV_DROP = new Set(["_", "PWD", "OLDPWD", "SHLVL", "TMPDIR", "GV_LAB", "GV_TIME_SCALE", "TERM_PROGRAM"]);

const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The job script the lab's init runs in the chroot. */
export function jobScript(command: readonly string[], cwd: string, env: NodeJS.ProcessEnv, refMs: number): string {
  const lines = ["# guardvisor lab job", `cd ${shellQuote(cwd)} || exit 127`];
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined || ENV_DROP.has(k) || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) continue;
    lines.push(`export ${k}=${shellQuote(v)}`);
  }
  // Over 9p a file read right after an append can come back short: temporary files live in the lab's tmpfs.
  lines.push("export TMPDIR=/dev/shm GV_LAB=1");
  // A scale given on the host wins over the measured one.
  lines.push(`scale=$(${shellQuote(process.execPath)} -e ${shellQuote(CALIBRATION_JS)} ${refMs})`);
  lines.push('echo "scale $scale" >"$GV_LAB_CONTROL"');
  lines.push(`export GV_TIME_SCALE=${env.GV_TIME_SCALE ? shellQuote(env.GV_TIME_SCALE) : '"$scale"'}`);
  lines.push("unset GV_LAB_CONTROL scale");
  lines.push(`exec ${command.map(shellQuote).join(" ")}`);
  return `${lines.join("\n")}\n`;
}

/**
 * The calibration workload: Node starting, compiling fresh code and
 * allocating, the work a Guardvisor process does besides KVM_RUN. It prints
 * its time since the process started in ms or, given the host's time as its
 * argument, the scale (lab time / host time, rounded up to 0.1, at least 1).
 */
export const CALIBRATION_JS = [
  "const ref=Number(process.argv[1]);let s=0;",
  "for(let i=0;i<300;i++)s=(s+new Function('a','return a*'+i+'+'+i)(i))|0;",
  "const a=[];for(let i=0;i<100000;i++)a.push({i,k:String(i*7)});a.sort((x,y)=>x.k<y.k?-1:1);",
  "const ms=performance.now();",
  "console.log(ref>0?Math.max(1,Math.ceil(ms/ref*10)/10):ms+(s&0));",
].join("");

/** The calibration workload's time on this host, in ms (best of three). */
export function hostCalibrationMs(): number {
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 3; i++) {
    const r = spawnSync(process.execPath, ["-e", CALIBRATION_JS], { encoding: "utf8" });
    const ms = Number(r.stdout.trim());
    if (r.status !== 0 || !(ms > 0)) {
      throw new GuardvisorError("LAB_UNAVAILABLE", "the calibration workload failed on this host");
    }
    best = Math.min(best, ms);
  }
  return best;
}

function qemuArgs(
  inputs: LabInputs,
  initrd: string,
  jobDir: string,
  sockets: Record<string, string>,
  o: {
    tcg: TcgMode;
    memMiB: number;
    consoleLog: string;
  },
): string[] {
  const ports = Object.entries(LAB_PORTS).flatMap(([key, name], i) => [
    "-chardev",
    `socket,id=p${i},path=${sockets[key]}`,
    "-device",
    `virtserialport,bus=vser.0,nr=${i + 1},chardev=p${i},name=${name}`,
  ]);
  return [
    "-accel",
    `tcg,thread=${o.tcg}`,
    "-smp",
    "2",
    "-m",
    `${o.memMiB}M`,
    "-cpu",
    "max,+svm,+npt",
    "-nodefaults",
    "-no-reboot",
    "-display",
    "none",
    "-monitor",
    "none",
    "-chardev",
    `file,id=con,path=${o.consoleLog}`,
    "-serial",
    "chardev:con",
    "-kernel",
    inputs.kernel,
    "-initrd",
    initrd,
    "-append",
    `console=ttyS0 quiet panic=-1 gvlab.job=${jobDir}`,
    "-virtfs",
    "local,path=/,mount_tag=hostroot,security_model=passthrough,multidevs=remap",
    "-device",
    "virtio-serial-pci,id=vser",
    ...ports,
  ];
}

function listen(path: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(path, () => resolve(s));
  });
}

const lastLines = (path: string, n: number) => {
  try {
    return readFileSync(path, "utf8").trimEnd().split("\n").slice(-n).join(" | ");
  } catch {
    return "(no console output)";
  }
};

/** Run one command in the lab. Resolves with its exit code; rejects with LAB_UNAVAILABLE or LAB_FAILED. */
export async function runInLab(opts: LabRunOptions): Promise<LabRunResult> {
  if (process.env.GV_LAB === "1") {
    throw new GuardvisorError("LAB_UNAVAILABLE", "already inside the lab: it does not nest (use /dev/kvm here)");
  }
  const inputs = findLabInputs();
  const cache = labCacheDir();
  const initrd = labInitramfs(inputs, cache).path;
  const tcg = opts.tcg ?? defaultTcgMode();
  const refMs = hostCalibrationMs();
  const jobsDir = join(cache, "jobs");
  mkdirSync(jobsDir, { recursive: true });
  const jobDir = mkdtempSync(join(jobsDir, "job-"));
  const sockDir = mkdtempSync(join(tmpdir(), "gvlab-"));
  const consoleLog = join(jobDir, "console.log");
  writeFileSync(
    join(jobDir, "run.sh"),
    jobScript(opts.command, opts.cwd ?? process.cwd(), opts.env ?? process.env, refMs),
  );
  const sockets = {
    stdout: join(sockDir, "o"),
    stderr: join(sockDir, "e"),
    control: join(sockDir, "c"),
    signal: join(sockDir, "s"),
  };
  const servers = await Promise.all(Object.values(sockets).map(listen));
  const [outSrv, errSrv, ctlSrv, sigSrv] = servers as [Server, Server, Server, Server];
  const conns: Socket[] = [];
  let sigConn: Socket | undefined;
  sigSrv.on("connection", (c) => {
    conns.push(c);
    sigConn = c;
  });
  const stdout = opts.stdout ?? process.stdout;
  const stderr = opts.stderr ?? process.stderr;
  const t0 = Date.now();
  let bootMs = 0;
  let scale = 0;
  let exitCode: number | undefined;
  let failure: string | undefined;
  outSrv.on("connection", (c) => {
    conns.push(c);
    c.on("data", (d) => stdout.write(d));
  });
  errSrv.on("connection", (c) => {
    conns.push(c);
    c.on("data", (d) => stderr.write(d));
  });
  let ctlBuf = "";
  ctlSrv.on("connection", (c) => {
    conns.push(c);
    c.setEncoding("utf8");
    c.on("data", (d: string) => {
      ctlBuf += d;
      for (let i = ctlBuf.indexOf("\n"); i >= 0; i = ctlBuf.indexOf("\n")) {
        const line = ctlBuf.slice(0, i).trim();
        ctlBuf = ctlBuf.slice(i + 1);
        const [word, ...rest] = line.split(" ");
        if (word === "booted") bootMs = Date.now() - t0;
        else if (word === "scale") scale = Number(rest[0]);
        else if (word === "exit") exitCode = Number(rest[0]);
        else if (word === "fail") failure = rest.join(" ");
      }
    });
  });
  const args = qemuArgs(inputs, initrd, jobDir, sockets, { tcg, memMiB: opts.memMiB ?? 8192, consoleLog });
  // The emulator gets SIGKILL when this process dies, whatever way it dies.
  const child: ChildProcess = existsSync("/usr/bin/setpriv")
    ? spawn("/usr/bin/setpriv", ["--pdeathsig", "KILL", "--", inputs.qemu, ...args], {
        stdio: ["ignore", "ignore", "pipe"],
      })
    : spawn(inputs.qemu, args, { stdio: ["ignore", "ignore", "pipe"] });
  let qemuErr = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (d: string) => {
    qemuErr = (qemuErr + d).slice(-2000);
  });
  let stoppedBy: string | undefined;
  const stop = (why: string) => {
    if (stoppedBy) return;
    stoppedBy = why;
    child.kill("SIGKILL");
  };
  // SIGHUP goes to the command (guardvisor run reloads its policy); Ctrl-C and SIGTERM stop the lab.
  const onSignal = (sig: NodeJS.Signals) => (sig === "SIGHUP" ? sigConn?.write("HUP\n") : stop(sig));
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  for (const s of signals) process.on(s, onSignal);
  const timer = opts.timeoutMs ? setTimeout(() => stop("timeout"), opts.timeoutMs) : undefined;
  try {
    const status = await new Promise<number | null>((resolve) => {
      child.once("exit", (code) => resolve(code));
      child.once("error", (e) => {
        qemuErr += String(e);
        resolve(null);
      });
    });
    // Drain what the ports still hold.
    await new Promise((r) => setTimeout(r, 50));
    if (stoppedBy === "timeout") {
      throw new GuardvisorError("LAB_FAILED", `the lab was stopped after ${opts.timeoutMs! / 1000} s (timeout)`);
    }
    if (stoppedBy)
      return { exitCode: stoppedBy === "SIGINT" ? 130 : 143, scale, bootMs, totalMs: Date.now() - t0, tcg };
    if (failure) throw new GuardvisorError("LAB_FAILED", `the lab could not run the command: ${failure}`);
    if (exitCode === undefined) {
      throw new GuardvisorError(
        "LAB_FAILED",
        `the emulated machine stopped (status ${status}) before the command ended: ${qemuErr.trim().split("\n").pop() ?? ""} console: ${lastLines(consoleLog, 3)}`,
      );
    }
    return { exitCode, scale, bootMs, totalMs: Date.now() - t0, tcg };
  } finally {
    if (timer) clearTimeout(timer);
    for (const s of signals) process.off(s, onSignal);
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    for (const c of conns) c.destroy();
    for (const s of servers) s.close();
    rmSync(sockDir, { recursive: true, force: true });
    if (!process.env.GV_LAB_KEEP_JOBS) rmSync(jobDir, { recursive: true, force: true });
  }
}
