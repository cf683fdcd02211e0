/**
 * A writer rule (a RIP range, an allowlisted originator) applies only to
 * sealed kernel code at its own address: code mapped over the routine's
 * virtual address, or code outside the protected ranges, is never the
 * sanctioned writer, whatever its RIP (WRITER_UNTRUSTED).
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { ABI_CONSTANTS as C, CONTEXT_FLAGS } from "../../src/abi/guest-abi.js";
import { VmmDecider } from "../../src/decide/decider.js";
import { compilePolicy, FAILSAFE_DEFAULTS, type Policy } from "../../src/decide/policy.js";
import { decodeContext } from "../../src/model/context.js";
import { makeRegions } from "../../src/model/regions.js";
import { writePageTables } from "../../src/vmm/boot.js";
import { ProtectionMap } from "../../src/vmm/protection.js";
import { dispatchFixture, MEM } from "../support/dispatch.js";

const { mem, setup } = dispatchFixture();
after(() => mem.release());

const regions = makeRegions([{ name: ".text", start: 0x100000, end: 0x102000 }], MEM);
const TEXT_VA = [{ name: ".text", start: 0x100000n, end: 0x102000n, gpa: 0x100000 }];
const ROUTINE = 0x100180;
const TARGET = 0x101010;
const COPY = 0x180000;

const policy: Policy = {
  name: "patcher",
  rules: [
    {
      name: "allow-patcher",
      kinds: ["protected-write"],
      rip: { from: 0x100100, to: 0x100200 },
      verdict: "allow",
      reason: "the sanctioned patcher",
    },
    { name: "deny-rest", kinds: ["protected-write"], verdict: "deny", reason: "protected" },
  ],
  defaults: FAILSAFE_DEFAULTS,
};

/** `mov [rax], bl` at virtual `code` (bytes at physical `at`), as the exit after it retired sees it. */
function writeFrom(code: number, protectedVirtual = TEXT_VA, at = code) {
  mem.write(at, Uint8Array.of(0x88, 0x18));
  const t = setup(policy, {
    protection: new ProtectionMap(regions, MEM),
    decider: new VmmDecider(compilePolicy(policy, regions)),
    protectedVirtual,
  });
  t.cpu.regs = { ...t.cpu.regs, rip: BigInt(code + 2), rax: BigInt(TARGET), rbx: 0x66n };
  t.d.dispatch({ kind: "mmio-write", gpa: TARGET, len: 1, data: Uint8Array.of(0x66) });
  const e = t.events[0];
  assert.ok(e);
  return { e, flags: decodeContext(e.record).flags };
}

describe("writer rules and sealed code", () => {
  it("allow the routine running from its own sealed page", () => {
    writePageTables(mem, MEM);
    const { e, flags } = writeFrom(ROUTINE);
    assert.equal(e.rip, BigInt(ROUTINE));
    assert.equal(e.verdict, "allow");
    assert.equal(flags & CONTEXT_FLAGS.WRITER_UNTRUSTED, 0);
  });

  it("never allow code mapped over the routine's address", () => {
    writePageTables(mem, MEM);
    // The attacker's copy of the page, with the same store at the same offset, mapped at the routine's page.
    mem.writeU64(C.BOOT_PT_LOW + 8 * 0x100, BigInt(COPY) | 3n);
    const { e, flags } = writeFrom(ROUTINE, TEXT_VA, COPY + (ROUTINE - 0x100000));
    assert.equal(e.rip, BigInt(ROUTINE), "located at the routine's virtual address");
    assert.equal(e.verdict, "deny");
    assert.equal(e.rule, "deny-rest");
    assert.ok(flags & CONTEXT_FLAGS.WRITER_UNTRUSTED);
    assert.match(e.note ?? "", /not sealed kernel code at its own address/);
    writePageTables(mem, MEM);
  });

  it("never allow a writer outside the protected ranges, even inside the rule's RIP range", () => {
    writePageTables(mem, MEM);
    const outside = [{ name: ".text", start: 0x101000n, end: 0x102000n, gpa: 0x101000 }];
    const { e, flags } = writeFrom(ROUTINE, outside);
    assert.equal(e.verdict, "deny");
    assert.ok(flags & CONTEXT_FLAGS.WRITER_UNTRUSTED);
  });
});
