/**
 * Fuzzing every input a guest or a misbehaving health VM controls, with
 * fast-check: exception frames on the guest stack, the code and registers
 * behind a protected write, exits through the dispatcher, IDC answers and
 * ring counters, kernel ELF images, audit logs, policy files. Each target states what must
 * hold for every input: no exception escapes (or only a GuardvisorError
 * naming the problem), and what is accepted is in range.
 *
 * `npm test` runs each target with a fixed seed and a few hundred inputs;
 * `npm run fuzz` runs them long (GV_FUZZ_RUNS, default there 20,000) with a
 * fresh seed that a failure prints, to be replayed with GV_FUZZ_SEED.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { IDC_GUEST_CTL, IDC_RESPONSE, VERDICTS } from "../../src/abi/guest-abi.js";
import { verifyChain } from "../../src/audit/chain.js";
import { AuditLog } from "../../src/audit/log.js";
import { compilePolicy, DEFAULT_POLICY } from "../../src/decide/policy.js";
import { policyHashOf } from "../../src/decide/rule-table.js";
import { defaultKernelPath } from "../../src/elf/kernel-file.js";
import { loadElf } from "../../src/elf/kernel-image.js";
import { GuardvisorError } from "../../src/errors.js";
import { IdcRegion } from "../../src/idc/channel.js";
import { idcLayout } from "../../src/idc/layout.js";
import { packageRoot } from "../../src/kvm/native.js";
import { type Regs, zeroRegs } from "../../src/kvm/structs.js";
import { emptyContext } from "../../src/model/context.js";
import { makeRegions } from "../../src/model/regions.js";
import { readPolicyKernel } from "../../src/policy/compile-file.js";
import { parsePolicyText } from "../../src/policy/load.js";
import { resolvePolicy } from "../../src/policy/resolve.js";
import { writePageTables } from "../../src/vmm/boot.js";
import { decodeExceptionFrame } from "../../src/vmm/frame.js";
import { locateWrite } from "../../src/vmm/write-site.js";
import { syntheticRecord, tempDir } from "../support/audit.js";
import { dispatchFixture, MEM, sregs } from "../support/dispatch.js";

const RUNS = Number(process.env.GV_FUZZ_RUNS || 300);
const SEED = process.env.GV_FUZZ_SEED
  ? Number(process.env.GV_FUZZ_SEED)
  : process.env.GV_FUZZ_RUNS
    ? undefined
    : 0x5eed;
const params = (runs = RUNS): fc.Parameters<unknown> => ({
  numRuns: Math.floor(runs),
  ...(SEED === undefined ? {} : { seed: SEED }),
});

/** Only a GuardvisorError may come out of `f`. */
function onlyTypedErrors(f: () => unknown): void {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof GuardvisorError, `not a GuardvisorError: ${(e as Error)?.stack ?? String(e)}`);
  }
}

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const nearRam = fc.oneof(
  fc.bigInt({ min: 0n, max: BigInt(MEM + 0x2000) }),
  u64,
  fc.constantFrom(0n, BigInt(MEM - 8), BigInt(MEM), (1n << 47n) - 8n, 0xffff_8000_0000_0000n, (1n << 64n) - 8n),
);

const { mem, regions, setup } = dispatchFixture();
after(() => mem.release());

// Identity-mapped page tables below 0x10000; the dispatcher target rebuilds them for each input.
writePageTables(mem, MEM);

describe("fuzz: exception frames on a hostile guest stack", () => {
  it("decodeExceptionFrame never throws; a frame it accepts is in range", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 64, maxLength: 64 }), nearRam, nearRam, (stack, rsp, cr3) => {
        // The stack goes above the page tables and is cleared again after each input.
        const at = rsp >= 0x10000n && rsp < BigInt(MEM - 64) ? Number(rsp) : undefined;
        if (at !== undefined) mem.write(at, stack);
        const r = decodeExceptionFrame(mem, cr3 & ~0xfffn, rsp);
        if (at !== undefined) mem.fill(at, 64, 0);
        if (r.ok) {
          assert.ok(r.frame.vector >= 0 && r.frame.vector <= 255);
          assert.ok(r.frame.cpl >= 0 && r.frame.cpl <= 3);
        } else assert.ok(r.why.length > 0);
      }),
      params(),
    );
  });
});

describe("fuzz: the code and registers behind a protected write", () => {
  const regsArb = fc.record({
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    rip: fc.oneof(fc.bigInt({ min: 0x100000n, max: 0x100800n }), nearRam),
  });
  it("locateWrite never throws, and names an instruction that ends at RIP", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        regsArb,
        fc.integer({ min: 0x100000, max: 0x100800 }),
        fc.uint8Array({ minLength: 1, maxLength: 8 }),
        (code, r, gpa, data) => {
          mem.write(0x100400, code);
          const regs: Regs = { ...zeroRegs(), ...r };
          const site = locateWrite(mem, { regs, sregs: sregs(0), gpa, data });
          if (site) {
            assert.ok(site.length >= 1 && site.length <= 15);
            const back = BigInt.asUintN(64, regs.rip - site.rip);
            assert.ok(back === 0n || back === BigInt(site.length), `site ${site.rip} for rip ${regs.rip}`);
          }
        },
      ),
      params(),
    );
  });
});

describe("fuzz: exits through the dispatcher", () => {
  const exitArb = fc.oneof(
    fc.record({
      kind: fc.constant("mmio-write" as const),
      gpa: fc.integer({ min: 0, max: MEM + 0x1000 }),
      data: fc.uint8Array({ minLength: 1, maxLength: 8 }),
    }),
    fc.record({
      kind: fc.constant("debug" as const),
      exception: fc.integer({ min: 0, max: 31 }),
      pc: nearRam,
      dr6: u64,
      dr7: u64,
    }),
    fc.record({ kind: fc.constant("msr-write" as const), index: fc.nat(), value: u64 }),
    fc.record({ kind: fc.constant("msr-read" as const), index: fc.nat() }),
    // KVM could not emulate the instruction at RIP: decoded from guest bytes.
    fc.record({
      kind: fc.constant("internal-error" as const),
      suberror: fc.constantFrom(1, 2, 3),
      data: fc.constant([]),
    }),
    fc.record({
      kind: fc.constant("io-out" as const),
      port: fc.integer({ min: 0, max: 0xffff }),
      size: fc.constantFrom(1, 2, 4),
      count: fc.constant(1),
      data: fc.uint8Array({ minLength: 4, maxLength: 4 }),
    }),
  );
  it("dispatch never throws anything but a GuardvisorError, and answers continue or stop", () => {
    fc.assert(
      fc.property(
        fc.array(exitArb, { minLength: 1, maxLength: 12 }),
        nearRam,
        nearRam,
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        (exits, rsp, rdi, code) => {
          mem.fill(0, MEM, 0);
          writePageTables(mem, MEM);
          mem.write(0x100400, code); // whatever the guest put where it stopped
          const { d, cpu } = setup();
          cpu.regs = { ...cpu.regs, rsp, rdi, rip: 0x100400n };
          for (const x of exits) {
            onlyTypedErrors(() => {
              const exit =
                x.kind === "mmio-write"
                  ? { kind: x.kind, gpa: x.gpa, len: x.data.length, data: x.data }
                  : x.kind === "io-out"
                    ? { ...x, data: x.data.subarray(0, x.size) }
                    : x.kind === "internal-error"
                      ? { kind: x.kind, suberror: x.suberror, data: [] as bigint[] }
                      : x;
              const a = d.dispatch(exit);
              assert.ok(a.kind === "continue" || a.kind === "stop");
            });
          }
        },
      ),
      params(Math.max(50, RUNS / 4)),
    );
  });
});

describe("fuzz: a hostile health VM's answers and ring counters", () => {
  const protectedRegions = makeRegions([{ name: ".text", start: 0x100000, end: 0x101000 }], 1 << 24);
  const policy = compilePolicy(DEFAULT_POLICY, protectedRegions);
  const HASH = policyHashOf(policy.table);
  it("poll, finalize and rewind never throw; an accepted answer is a known verdict under the policy", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.array(fc.tuple(fc.nat({ max: 4095 }), u64), { maxLength: 24 }),
        fc.array(fc.tuple(fc.nat(63), fc.nat()), { maxLength: 24 }),
        (n, words, ints) => {
          const layout = idcLayout(1, 4);
          const r = new IdcRegion(new ArrayBuffer(layout.size), layout);
          r.initialize([policy.table]);
          const ch = r.channel(0);
          const seqs: bigint[] = [];
          for (let i = 0; i < n; i++) {
            const c = emptyContext("protected-write");
            const s = ch.submit(c);
            if (s !== undefined) seqs.push(s);
          }
          // The engine writes whatever it likes over its control block and response slots.
          const b = r.blockBase(0);
          const span = layout.respOffset + 4 * IDC_RESPONSE.size;
          for (const [at, v] of words) r.store64(b + ((at * 8) % span), v);
          for (const [at, v] of ints)
            r.view.setUint32(b + layout.respOffset + ((at * 4) % (4 * IDC_RESPONSE.size)), v, true);
          for (const s of seqs) {
            const p = ch.poll(s);
            if (p.state === "answered") {
              assert.ok(Object.values(VERDICTS).includes(VERDICTS[p.verdict]));
              assert.equal(p.policyHash, HASH);
            }
            ch.finalize(s);
          }
          const again = r.rewindRing(0);
          assert.ok(again >= 0 && again <= layout.nslots);
          assert.equal(r.load64(b + IDC_GUEST_CTL.offset("req_published")), ch.published);
        },
      ),
      params(),
    );
  });
});

describe("fuzz: kernel ELF images", () => {
  const kernel = readFileSync(defaultKernelPath());
  it("a mutated gv-kernel loads, or fails with one GuardvisorError", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat({ max: 4095 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 16 }),
        fc.nat({ max: kernel.length }),
        (edits, cut) => {
          const img = Uint8Array.from(kernel.subarray(0, Math.max(64, cut)));
          // Most of what matters is in the headers: edit the first 4 KiB and the section table.
          const shoff = Number(Buffer.from(kernel).readBigUInt64LE(40));
          for (const [at, v] of edits) {
            const where = at < 2048 ? at : shoff + (at - 2048);
            if (where < img.length) img[where] = v;
          }
          onlyTypedErrors(() => loadElf(img, 32 << 20));
        },
      ),
      params(Math.max(50, RUNS / 3)),
    );
  });
});

describe("fuzz: audit logs", () => {
  const path = join(tempDir(), "a.jsonl");
  const log = new AuditLog(path);
  for (let i = 1; i <= 4; i++) log.append(syntheticRecord(i));
  log.close();
  const good = readFileSync(path);
  const whole = verifyChain([{ name: "a.jsonl", data: good }]);
  it("verifyChain never throws, and a changed byte is never verified as it was", () => {
    assert.ok(whole.ok && whole.records >= 4, JSON.stringify(whole.bad));
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat({ max: good.length - 1 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 6,
        }),
        (edits) => {
          const data = Uint8Array.from(good);
          for (const [at, v] of edits) data[at] = v;
          const changed = !Buffer.from(data).equals(good);
          const rep = verifyChain([{ name: "a.jsonl", data }]);
          if (changed)
            assert.ok(
              !rep.ok || rep.records < whole.records || rep.head !== whole.head,
              "a changed log verified whole",
            );
        },
      ),
      params(),
    );
  });
});

describe("fuzz: policy files", () => {
  const shipped = readFileSync(join(packageRoot(), "policies", "legit-patch.yaml"), "utf8");
  const kernel = readPolicyKernel(defaultKernelPath());
  it("a mutated policy loads and resolves, or fails with one CONFIG_INVALID naming where", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat({ max: shipped.length - 1 }), fc.nat({ max: 40 }), fc.string({ maxLength: 12 })), {
          minLength: 1,
          maxLength: 4,
        }),
        (edits) => {
          let text = shipped;
          for (const [at, cut, put] of edits) text = text.slice(0, at) + put + text.slice(at + cut);
          try {
            const p = resolvePolicy(parsePolicyText(text, "fuzz.yaml"), kernel);
            compilePolicy(p, makeRegions(kernel.regions, 32 << 20));
          } catch (e) {
            assert.ok(e instanceof GuardvisorError, `not a GuardvisorError: ${(e as Error)?.stack ?? String(e)}`);
            assert.equal(e.code, "CONFIG_INVALID");
            assert.match(e.message, /^fuzz\.yaml(:\d+:\d+)?: /);
          }
        },
      ),
      params(Math.max(50, RUNS / 4)),
    );
  });
});

void regions;
