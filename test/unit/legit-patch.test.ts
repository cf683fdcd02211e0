/**
 * The shipped legit-patch policy against the built gv-kernel: a write to
 * .text from inside gv_legit_patch is allowed, the same write from
 * rogue_patch is denied — with both deciders' evaluator (the rule table).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CONTEXT_FLAGS } from "../../src/abi/guest-abi.js";
import { VmmDecider } from "../../src/decide/decider.js";
import { compilePolicy } from "../../src/decide/policy.js";
import { defaultKernelPath } from "../../src/elf/kernel-file.js";
import { loadElf } from "../../src/elf/kernel-image.js";
import { packageRoot } from "../../src/kvm/native.js";
import { emptyContext } from "../../src/model/context.js";
import { makeRegions } from "../../src/model/regions.js";
import { readPolicyKernel } from "../../src/policy/compile-file.js";
import { loadPolicyFile } from "../../src/policy/load.js";
import { resolvePolicy } from "../../src/policy/resolve.js";
import { findScenario } from "../../src/scenarios.js";

const MEM = 32 << 20;

describe("legit-patch policy on the built gv-kernel", () => {
  const kernel = readFileSync(defaultKernelPath());
  const { image, regions: elfRegions } = loadElf(kernel, MEM);
  const regions = makeRegions(elfRegions, MEM);
  const sc = findScenario("legit-patch");
  const policy = resolvePolicy(
    loadPolicyFile(join(packageRoot(), sc.policy ?? "")),
    readPolicyKernel(defaultKernelPath()),
  );
  const decider = new VmmDecider(compilePolicy(policy, regions));
  const sym = (name: string) => {
    const s = image.symbols.find((x) => x.name === name);
    assert.ok(s, `symbol ${name}`);
    return s;
  };
  const text = regions.find((r) => r.name === ".text");
  const target = sym("gv_patch_target").value + 1;

  function writeFrom(rip: number, flags = 0, gpa = target) {
    const c = emptyContext("protected-write");
    c.flags = flags;
    c.regionId = text?.id ?? 0;
    c.gpa = gpa;
    c.data = Uint8Array.of(2);
    c.regs.rip = BigInt(rip);
    return decider.decide(c);
  }

  it("allows the write from inside gv_legit_patch, anywhere in the routine", () => {
    const p = sym("gv_legit_patch");
    assert.ok(p.size > 0);
    for (const off of [0, p.size - 1]) {
      const d = writeFrom(p.value + off);
      assert.equal(d.verdict, "allow");
      assert.equal(d.rule, "allow-legit-patch");
    }
  });

  it("denies a write whose writer was not found, even when it resumes inside gv_legit_patch", () => {
    const p = sym("gv_legit_patch");
    const d = writeFrom(p.value, CONTEXT_FLAGS.WRITER_UNKNOWN);
    assert.equal(d.verdict, "deny", "a stosb ending at the routine's first byte is not the routine");
    assert.notEqual(d.rule, "allow-legit-patch");
  });

  it("denies gv_legit_patch a write anywhere but the patch site, or one running past it", () => {
    const p = sym("gv_legit_patch");
    assert.equal(writeFrom(p.value, 0, target - 1).verdict, "deny", "the opcode byte");
    assert.equal(writeFrom(p.value, 0, sym("rogue_patch").value).verdict, "deny", "other code");
    assert.equal(writeFrom(p.value, 0, target + 4).verdict, "deny", "the ret after the immediate");
  });

  it("denies a writer that is not the sealed routine at its own address", () => {
    const p = sym("gv_legit_patch");
    assert.equal(writeFrom(p.value, CONTEXT_FLAGS.WRITER_UNTRUSTED).verdict, "deny");
  });

  it("denies the same write from rogue_patch or just past gv_legit_patch", () => {
    const p = sym("gv_legit_patch");
    assert.equal(writeFrom(sym("rogue_patch").value).verdict, "deny");
    assert.equal(writeFrom(p.value + p.size).verdict, "deny");
  });
});
