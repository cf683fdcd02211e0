/**
 * The bare-KVM baseline (bench/baseline.c) without KVM: clear one-line errors
 * and exit codes, and --dry-run, which builds guest RAM exactly as it is at
 * the first instruction: compared byte for byte with what Guardvisor builds
 * (segments as GuestVm loads them, src/vmm/boot.ts writeBootArea), with the
 * same protected regions, memory slots and entry registers. The histogram
 * it and the guest use is compared with an exact percentile.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { baselinePath, parseBaselineOutput } from "../../src/bench/baseline.js";
import { percentile } from "../../src/bench/stats.js";
import { PF_R, PF_W, PF_X, SHF_ALLOC, SHF_WRITE } from "../../src/elf/elf.js";
import { loadElf } from "../../src/elf/kernel-image.js";
import { GuestMemory } from "../../src/kvm/guest-memory.js";
import { kernelLayout, packageRoot } from "../../src/kvm/native.js";
import { decodeSregs } from "../../src/kvm/structs.js";
import { makeRegions } from "../../src/model/regions.js";
import { bootRegs, bootSregs, MIB, writeBootArea } from "../../src/vmm/boot.js";
import { planMemorySlots } from "../../src/vmm/protection.js";
import { buildElf, type ElfSpec, kernelSpec, prng } from "./elf-fixtures.js";

const BASELINE = baselinePath();
const HIST_CHECK = join(packageRoot(), "bench", "out", "hist-check");
const GV_KERNEL = join(packageRoot(), "guest", "out", "gv-kernel.elf");
const dir = mkdtempSync(join(tmpdir(), "gv-baseline-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function baseline(args: string[], input?: string) {
  const r = spawnSync(BASELINE, args, { encoding: "latin1", input, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function file(name: string, bytes: Uint8Array | string): string {
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}

function oneErrorLine(stderr: string, pattern: RegExp): void {
  const lines = stderr.split("\n").filter(Boolean);
  assert.equal(lines.length, 1, stderr);
  assert.match(lines[0]!, /^baseline: error: /);
  assert.match(lines[0]!, pattern);
}

/** What Guardvisor puts in guest RAM before the first instruction (GuestVm.build's steps). */
function guardvisorRam(kernel: Uint8Array, memSize: number, cmdline: string): GuestMemory {
  const { image } = loadElf(kernel, memSize);
  const mem = GuestMemory.allocate(memSize);
  for (const s of image.loadSegments) {
    mem.write(Number(s.paddr), image.data.subarray(s.offset, s.offset + s.filesz));
    if (s.memsz > s.filesz) mem.fill(Number(s.paddr) + s.filesz, s.memsz - s.filesz, 0);
  }
  writeBootArea(mem, { memSize, cmdline, role: 0, vmId: 0 });
  return mem;
}

interface DryRun {
  entry: number;
  memSize: number;
  regions: { name: string; start: number; end: number }[];
  slots: { gpa: number; size: number; readonly: boolean }[];
  regs: Record<"rip" | "rsp" | "rdi" | "rflags", number>;
  sregs: Record<string, unknown>;
}

/** Run --dry-run and check everything against Guardvisor; `compareBytes` limits the RAM compared. */
function checkDryRun(kernelPath: string, memMiB: number, cmdline: string | undefined, compareBytes?: number): void {
  const kernel = readFileSync(kernelPath);
  const memSize = memMiB * MIB;
  const out = join(dir, "ram.bin");
  const args = ["--dry-run", out, "--mem", String(memMiB), ...(cmdline === undefined ? [] : ["--cmdline", cmdline])];
  const r = baseline([...args, kernelPath]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "");
  const plan = JSON.parse(r.stdout) as DryRun;
  const want = cmdline ?? "scenario=bench-write role=guest";

  const { image, regions } = loadElf(kernel, memSize);
  assert.equal(plan.entry, image.entry);
  assert.equal(plan.memSize, memSize);
  assert.deepEqual(plan.regions, regions);
  assert.deepEqual(plan.slots, planMemorySlots(memSize, makeRegions(regions, memSize)));

  const regs = bootRegs(image.entry);
  assert.deepEqual(plan.regs, {
    rip: Number(regs.rip),
    rsp: Number(regs.rsp),
    rdi: Number(regs.rdi),
    rflags: Number(regs.rflags),
  });
  const zero = decodeSregs(new DataView(new ArrayBuffer(kernelLayout("kvm_sregs").size)));
  const s = bootSregs(zero);
  const seg = (g: typeof s.cs) => ({ ...g, base: Number(g.base) });
  assert.deepEqual(plan.sregs, {
    cs: seg(s.cs),
    ds: seg(s.ds),
    gdtBase: Number(s.gdt.base),
    gdtLimit: s.gdt.limit,
    idtBase: Number(s.idt.base),
    idtLimit: s.idt.limit,
    cr0: Number(s.cr0),
    cr3: Number(s.cr3),
    cr4: Number(s.cr4),
    efer: Number(s.efer),
  });
  for (const k of ["es", "fs", "gs", "ss"] as const) assert.deepEqual(s[k], s.ds, k);

  assert.equal(statSync(out).size, memSize);
  const mem = guardvisorRam(kernel, memSize, want);
  try {
    const n = compareBytes ?? memSize;
    const fd = openSync(out, "r");
    try {
      const chunk = Buffer.alloc(4 * MIB);
      for (let at = 0; at < n; at += chunk.length) {
        const len = Math.min(chunk.length, n - at);
        assert.equal(readSync(fd, chunk, 0, len, at), len);
        const theirs = mem.slice(at, len);
        if (!chunk.subarray(0, len).equals(theirs)) {
          let i = 0;
          while (chunk[i] === theirs[i]) i++;
          assert.fail(`guest RAM differs at 0x${(at + i).toString(16)}: baseline ${chunk[i]}, Guardvisor ${theirs[i]}`);
        }
      }
    } finally {
      closeSync(fd);
    }
  } finally {
    mem.release();
  }
}

describe("baseline VMM (bench/baseline.c)", () => {
  it("is built by npm run build", () => {
    assert.ok(statSync(BASELINE).isFile(), `${BASELINE} is missing`);
  });

  it("refuses a file that is not an ELF image with one line and exit code 2", () => {
    const r = baseline([file("not-elf.bin", "this is not a kernel\n")]);
    assert.equal(r.status, 2);
    assert.equal(r.stdout, "");
    oneErrorLine(r.stderr, /not-elf\.bin: not an ELF file$/);
  });

  it("refuses a missing kernel, bad options and bad command lines with exit code 2", () => {
    const cases: [string[], RegExp][] = [
      [[join(dir, "nope.elf")], /cannot read kernel .*nope\.elf: No such file/],
      [["--mem", "3", GV_KERNEL], /--mem: 3 MiB must be an even number/],
      [["--mem", "lots", GV_KERNEL], /--mem: 'lots' is not a number/],
      [["--cmdline", "a\nb", GV_KERNEL], /--cmdline: only printable ASCII/],
      [["--cmdline", "x".repeat(2048), GV_KERNEL], /--cmdline: longer than 2047 bytes/],
      [["--frobnicate", GV_KERNEL], /unknown option --frobnicate/],
      [[], /no kernel given/],
      [["--mem"], /--mem needs a value/],
    ];
    for (const [args, pattern] of cases) {
      const r = baseline(args);
      assert.equal(r.status, 2, args.join(" "));
      oneErrorLine(r.stderr, pattern);
    }
  });

  it("refuses an ELF that is not an x86-64 executable, or whose segments do not fit RAM", () => {
    const spec = kernelSpec();
    const high: ElfSpec = { ...spec, segments: spec.segments.map((s) => ({ ...s, vaddr: s.vaddr + 64 * MIB })) };
    high.entry += 64 * MIB;
    high.sections = false;
    const r = baseline(["--dry-run", join(dir, "x.bin"), file("high.elf", buildElf(high).bytes)]);
    assert.equal(r.status, 2);
    oneErrorLine(r.stderr, /segment 0 .* is not inside guest RAM/);
    const obj = Buffer.from(buildElf(spec).bytes);
    obj.writeUInt16LE(1, 16); // ET_REL
    const r2 = baseline([file("rel.o", obj)]);
    assert.equal(r2.status, 2);
    oneErrorLine(r2.stderr, /not an x86-64 executable/);
  });

  it("says KVM is unavailable with one line and exit code 3", () => {
    const r = baseline(["--kvm", join(dir, "no-kvm"), GV_KERNEL]);
    assert.equal(r.status, 3);
    assert.equal(r.stdout, "");
    oneErrorLine(r.stderr, /KVM is unavailable: .*no-kvm does not exist$/);
  });

  it("--dry-run: gv-kernel's RAM, regions, slots and registers are exactly Guardvisor's", () => {
    checkDryRun(GV_KERNEL, 32, "scenario=bench-write role=guest n=100000 warm=5000");
  });

  it("--dry-run: the default command line, 4 MiB of RAM", () => {
    checkDryRun(GV_KERNEL, 4, undefined);
  });

  it("--dry-run: more than 1 GiB (two page directories), boot area and kernel compared", () => {
    checkDryRun(GV_KERNEL, 1026, "scenario=bench-ud role=guest", 4 * MIB);
  });

  it("--dry-run: kernels without section headers, and with protected and writable bytes on one page", () => {
    const noSections: ElfSpec = { ...kernelSpec(), sections: false, symbols: undefined };
    checkDryRun(file("nosec.elf", buildElf(noSections).bytes), 8, "role=guest");
    const shared: ElfSpec = {
      entry: 0x100000,
      segments: [
        { flags: PF_R | PF_X, vaddr: 0x100000, filesz: 0x300 },
        { flags: PF_R, vaddr: 0x101000, filesz: 0x100 },
        { flags: PF_R | PF_W, vaddr: 0x101800, filesz: 0x40, memsz: 0x2000 },
      ],
      sections: [
        { name: ".text", flags: SHF_ALLOC, addr: 0x100000, size: 0x300 },
        { name: ".rodata", flags: SHF_ALLOC, addr: 0x101000, size: 0x100 },
        { name: ".data", flags: SHF_ALLOC | SHF_WRITE, addr: 0x101800, size: 0x40 },
      ],
    };
    checkDryRun(file("shared.elf", buildElf(shared).bytes), 6, "scenario=x");
    checkDryRun(file("fixture.elf", buildElf(kernelSpec()).bytes), 32, "");
  });

  it("parses its JSON result and rejects output without one", () => {
    const r = parseBaselineOutput(
      'gv-kernel: boot\n{"exits":5,"p50Us":1.5,"p99Us":2,"wallUs":30,"exitCode":0,"tscKhz":2000000,"totalExits":9}\n',
    );
    assert.deepEqual(r, { exits: 5, p50Us: 1.5, p99Us: 2, wallUs: 30, exitCode: 0, tscKhz: 2000000, totalExits: 9 });
    assert.throws(() => parseBaselineOutput(""), /no JSON result/);
    assert.throws(() => parseBaselineOutput('{"exits":5}'), /no number p50Us/);
    assert.throws(() => parseBaselineOutput('{"exits":5,"p50Us":null}'), /no number p50Us/);
  });
});

describe("latency histogram (guest/include/bench_hist.h)", () => {
  function histCheck(values: number[]): { count: number; p50: number; p99: number; min: number; max: number } {
    const r = spawnSync(HIST_CHECK, [], { input: values.join(" "), encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    const [count, p50, p99, min, max] = r.stdout.trim().split(" ").map(Number) as number[];
    return { count: count!, p50: p50!, p99: p99!, min: min!, max: max! };
  }

  it("is exact below 128", () => {
    const values = Array.from({ length: 1000 }, (_, i) => (i * 37) % 128);
    const h = histCheck(values);
    assert.equal(h.count, 1000);
    assert.equal(h.p50, percentile(values, 0.5));
    assert.equal(h.p99, percentile(values, 0.99));
    assert.equal(h.min, 0);
    assert.equal(h.max, 127);
  });

  it("is within 1/128 of the exact nearest-rank percentile", () => {
    const rnd = prng(7);
    for (const scale of [1e3, 2e4, 1e6, 3e9]) {
      // Skewed like exit latencies: mostly near the mode, a long tail.
      const values = Array.from({ length: 20_000 }, () => Math.floor(scale * (1 + rnd() * 0.2 + rnd() ** 20 * 10)));
      const h = histCheck(values);
      for (const [got, q] of [
        [h.p50, 0.5],
        [h.p99, 0.99],
      ] as const) {
        const exact = percentile(values, q);
        assert.ok(Math.abs(got - exact) <= exact / 128 + 1, `scale ${scale} q ${q}: ${got} vs ${exact}`);
      }
      assert.equal(h.min, Math.min(...values));
      assert.equal(h.max, Math.max(...values));
    }
  });

  it("handles one sample, no samples and huge values", () => {
    assert.deepEqual(histCheck([12345]), { count: 1, p50: 12345, p99: 12345, min: 12345, max: 12345 });
    assert.deepEqual(histCheck([]), { count: 0, p50: 0, p99: 0, min: 0, max: 0 });
    const big = 2 ** 52;
    const h = histCheck([big, big + 1]);
    assert.equal(h.max, big + 1);
    assert.ok(h.p50 >= big && h.p50 <= big + 1);
  });
});
