import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CONTEXT_FLAGS, type EventKind } from "../../src/abi/guest-abi.js";
import { evaluate } from "../../src/decide/evaluate.js";
import { compilePolicy, DEFAULT_POLICY, effectiveVerdict } from "../../src/decide/policy.js";
import { decodeRuleTable } from "../../src/decide/rule-table.js";
import { GuardvisorError } from "../../src/errors.js";
import { type ContextRecord, emptyContext } from "../../src/model/context.js";
import { makeRegions } from "../../src/model/regions.js";
import { compilePolicyFile, compilePolicyForKernel } from "../../src/policy/compile-file.js";
import { loadPolicyFile, parsePolicyText } from "../../src/policy/load.js";
import { resolvePolicy } from "../../src/policy/resolve.js";
import { DELTA, FIXTURES, GOOD_POLICY_FILES, GV_KERNEL, SHIPPED, SYMBOLS, testKernel } from "./policy-fixtures.js";

const kernel = testKernel();
const regions = makeRegions(kernel.regions, 1 << 24);
const TEXT_ID = regions.find((r) => r.name === ".text")!.id;
const RODATA_ID = regions.find((r) => r.name === ".rodata")!.id;

const phys = (vaddr: number) => vaddr - DELTA;

function write(vaddrTarget: number, rip: number, len = 8, regionId = TEXT_ID): ContextRecord {
  const c = emptyContext("protected-write");
  c.gpa = phys(vaddrTarget);
  c.regionId = regionId;
  c.data = new Uint8Array(len);
  c.data[0] = 2; // a value legit-patch.yaml lists
  c.regs.rip = BigInt(rip);
  return c;
}

function compiled(text: string, k = kernel) {
  const policy = resolvePolicy(parsePolicyText(text, "p.yaml"), k);
  return { policy, compiled: compilePolicy(policy, regions) };
}

const resolveFails = (text: string, message: string | RegExp, k = kernel) =>
  assert.throws(
    () => resolvePolicy(parsePolicyText(text, "p.yaml"), k),
    (e: unknown) =>
      e instanceof GuardvisorError &&
      e.code === "CONFIG_INVALID" &&
      (typeof message === "string" ? e.message === message : message.test(e.message)),
  );

describe("policy files: allowlist exceptions", () => {
  const legit = loadPolicyFile(join(SHIPPED, "legit-patch.yaml"));
  const p = compilePolicy(resolvePolicy(legit, kernel), regions);
  const target = SYMBOLS.gv_patch_target.value + 1;
  const { value: start, size } = SYMBOLS.gv_legit_patch;

  it("allows a write to the patch site from inside the originator routine", () => {
    for (const rip of [start, start + 1, start + size - 1]) {
      const d = evaluate(p, write(target, rip, 4));
      assert.equal(d.verdict, "allow", `rip 0x${rip.toString(16)}`);
      assert.equal(d.rule, "allow-legit-patch");
    }
  });

  it("denies the same write from anywhere else", () => {
    for (const rip of [start - 1, start + size, SYMBOLS.kmain.value, SYMBOLS.gv_check_credentials.value]) {
      const d = evaluate(p, write(target, rip, 4));
      assert.equal(d.verdict, "deny", `rip 0x${rip.toString(16)}`);
      assert.equal(d.rule, "protect-kernel-regions");
    }
  });

  it("does not let the originator write past the patch site or elsewhere in .text", () => {
    for (const [addr, len] of [
      [target, 8],
      [target - 1, 4],
      [SYMBOLS.gv_check_credentials.value, 4],
    ] as const) {
      const d = evaluate(p, write(addr, start, len));
      assert.equal(d.verdict, "deny", `0x${addr.toString(16)}+${len}`);
    }
  });

  it("lets the originator store only the listed values, written whole", () => {
    for (const [bytes, verdict] of [
      [[1], "allow"],
      [[2, 0, 0, 0], "allow"],
      [[3], "deny"],
      [[0x77, 0, 0, 0], "deny"],
      [[2, 0, 0, 1], "deny"],
    ] as const) {
      const c = write(target, start, bytes.length);
      c.data = Uint8Array.from(bytes);
      assert.equal(evaluate(p, c).verdict, verdict, `value ${bytes}`);
    }
    // One piece of a split store, or a store longer than 8 bytes: its value is not known whole.
    const piece = write(target, start, 1);
    piece.data = Uint8Array.of(2);
    piece.accessLen = 2;
    piece.flags |= CONTEXT_FLAGS.DATA_PARTIAL;
    assert.equal(evaluate(p, piece).verdict, "deny");
  });

  it("does not let the originator write other regions", () => {
    const d = evaluate(p, write(SYMBOLS.syscall_table.value, start, 8, RODATA_ID));
    assert.equal(d.verdict, "deny");
  });

  it("names the field and the symbol when the kernel lacks the originator routine", () => {
    assert.throws(
      () => resolvePolicy(legit, testKernel({ withLegitPatch: false })),
      (e: unknown) =>
        e instanceof GuardvisorError &&
        e.code === "CONFIG_INVALID" &&
        /legit-patch\.yaml:\d+:\d+: exceptions\[0\]\.originator: no symbol gv_legit_patch in kernel test-kernel\.elf$/.test(
          e.message,
        ),
    );
  });

  it("restricts a symbol region to its bytes: the whole write must lie inside", () => {
    const { compiled: c } = compiled(
      "version: 1\nregions:\n  slot: {symbol: syscall_table, offset: 0x10, size: 8}\n" +
        "exceptions:\n  - {name: hook, originator: kmain, region: slot}\n",
    );
    const slot = SYMBOLS.syscall_table.value + 0x10;
    const rip = SYMBOLS.kmain.value;
    assert.equal(evaluate(c, write(slot, rip, 8, RODATA_ID)).verdict, "allow");
    assert.equal(evaluate(c, write(slot + 4, rip, 4, RODATA_ID)).verdict, "allow");
    assert.equal(evaluate(c, write(slot + 4, rip, 8, RODATA_ID)).verdict, "deny");
    assert.equal(evaluate(c, write(slot - 8, rip, 8, RODATA_ID)).verdict, "deny");
    assert.deepEqual(c.rules[0]?.gpa, { from: BigInt(phys(slot)), to: BigInt(phys(slot) + 8) });
  });

  it("lets a routine write an MSR, and nothing else write it", () => {
    const { compiled: c } = compiled(
      "version: 1\nexceptions:\n  - {name: setup, originator: gv_init_msrs, msr: LSTAR}\n" +
        "objects:\n  msrs: [{msr: LSTAR, action: deny-fault}]\n",
    );
    const m = emptyContext("msr-write");
    m.msrIndex = 0xc0000082;
    m.regs.rip = BigInt(SYMBOLS.gv_init_msrs.value + 4);
    assert.deepEqual([evaluate(c, m).verdict, evaluate(c, m).rule], ["allow", "setup"]);
    m.regs.rip = BigInt(SYMBOLS.kmain.value);
    assert.deepEqual([evaluate(c, m).verdict, evaluate(c, m).rule], ["deny-fault", "msr:LSTAR"]);
    m.msrIndex = 0xc0000081;
    assert.equal(evaluate(c, m).rule, "default:msr-write");
  });
});

describe("policy files: integrity objects by name", () => {
  it("object names the objects an integrity rule matches, as the numbers the context carries", () => {
    const p = resolvePolicy(
      parsePolicyText(
        "version: 1\nrules:\n  - {name: pt, event: integrity, object: [paging, CR3], action: deny}\n",
        "p.yaml",
      ),
      kernel,
    );
    assert.deepEqual(p.rules[0]?.objects, [18, 19]);
    assert.equal(p.rules[0]?.vectors, undefined, "objects have their own field, not the vector's");
    assert.equal(p.rules[0]?.reason, "integrity object paging, cr3");
  });

  it("refuses an unknown object, an object on another event, and a vector on an integrity rule", () => {
    const bad = (rule: string, message: RegExp) =>
      assert.throws(
        () => parsePolicyText(`version: 1\nrules:\n  - ${rule}\n`, "p.yaml"),
        (e: unknown) => e instanceof GuardvisorError && message.test(e.message),
      );
    bad(
      "{name: a, event: integrity, object: tss, action: deny}",
      /rules\[0\]\.object(\[0\])?: "tss" is not an integrity object/,
    );
    bad(
      "{name: a, event: cpu-exception, object: cr3, action: deny}",
      /rules\[0\]\.object: object needs event: integrity/,
    );
    bad(
      "{name: a, event: integrity, object: cr3, vector: 19, action: deny}",
      /rules\[0\]\.vector: vector needs event: cpu-exception \(an integrity rule names what changed with object\)/,
    );
  });
});

describe("policy files: resolving regions, objects and modes", () => {
  it("resolves sections, symbols and address ranges to regions and guest-physical ranges", () => {
    const { policy } = compiled(
      "version: 1\nregions:\n  code: {section: .text}\n  table: {symbol: syscall_table}\n" +
        "  tail: {from: 0x101080, to: 0x101100}\n" +
        "rules:\n  - {name: r, event: protected-write, region: [code, table, tail], action: deny}\n",
    );
    const t = phys(SYMBOLS.syscall_table.value);
    assert.deepEqual(
      policy.rules.map((r) => [r.regions, r.gpa]),
      [
        [[".text"], undefined],
        [[".rodata"], { from: t, to: t + SYMBOLS.syscall_table.size }],
        [[".rodata"], { from: 0x101080, to: 0x101100 }],
      ],
    );
  });

  it("refuses ranges outside protected memory and symbols without a size", () => {
    resolveFails(
      "version: 1\nregions:\n  d: {from: 0x102000, to: 0x102010}\n",
      /^p\.yaml:3:6: regions\.d: \[0x102000, 0x102010\) .* is not inside one protected region of kernel test-kernel\.elf/,
    );
    resolveFails(
      "version: 1\nregions:\n  s: {symbol: _start}\n",
      "p.yaml:3:15: regions.s.symbol: symbol _start has no size in kernel test-kernel.elf; give size",
    );
    resolveFails(
      "version: 1\nregions:\n  s: {symbol: syscall_table, offset: 0x38, size: 0x10}\n",
      /^p\.yaml:3:50: regions\.s\.size: offset 0x38 \+ size 0x10 runs past the end of syscall_table/,
    );
    resolveFails(
      "version: 1\nrules:\n  - {name: r, originator: _start, action: log}\n",
      "p.yaml:3:27: rules[0].originator: symbol _start has no size in kernel test-kernel.elf; give a rip range instead",
    );
  });

  it("carries objects and the restart limit as typed fields, and MSR objects as rules", () => {
    const file = loadPolicyFile(join(FIXTURES, "good", "everything.yaml"));
    const policy = resolvePolicy(file, kernel);
    assert.deepEqual(policy.objects?.msrs, [
      { index: 0xc0000082, name: "LSTAR", action: "deny-fault" },
      { index: 0x176, name: "SYSENTER_EIP", action: "deny" },
      { index: 0xc0000081, name: "STAR", action: "deny" },
    ]);
    assert.deepEqual(policy.objects?.idt, { seal: true, action: "deny-fault" });
    assert.deepEqual(policy.objects?.gdt, { seal: true, action: "deny" });
    assert.deepEqual(policy.objects?.pinnedCr, {
      cr0: 1 << 16,
      cr4: (1 << 20) | (1 << 21),
      cr0Bits: ["WP"],
      cr4Bits: ["SMEP", "SMAP"],
      action: "restart",
    });
    assert.deepEqual(policy.restart, { limit: 3, windowSeconds: 60, exhausted: "halt" });
    assert.equal(policy.defaults["cpu-exception"], "kill-task");
    assert.equal(policy.defaults.hang, "halt");
    assert.equal(policy.defaults["protected-write"], "deny");
    const msrRules = policy.rules.filter((r) => r.name.startsWith("msr:"));
    assert.deepEqual(
      msrRules.map((r) => [r.msr, r.verdict, r.reason]),
      [
        [0xc0000082, "deny-fault", "write to MSR LSTAR"],
        [0x176, "deny", "write to MSR SYSENTER_EIP"],
        [0xc0000081, "deny", "syscall segment selectors"],
      ],
    );
    // Order: exceptions, then rules, then MSR objects, then the IDT and pinned CR bits (integrity objects 16; 0, 4).
    assert.deepEqual(
      [...new Set(policy.rules.map((r) => r.name))],
      ["live-patch", "msr-setup", "protect-code", "table-hook", "user-faults", "kernel-faults", "crashes"]
        .concat(msrRules.map((r) => r.name))
        .concat(["object:idt", "object:gdt", "object:pinned-cr"]),
    );
    assert.deepEqual(
      policy.rules.filter((r) => r.name.startsWith("object:")).map((r) => [r.kinds, r.objects, r.verdict]),
      [
        [["integrity"], [16], "deny-fault"],
        [["integrity"], [17], "deny"],
        [["integrity"], [0, 4], "restart"],
      ],
    );
    // msr-setup: two originators x two MSRs.
    assert.equal(policy.rules.filter((r) => r.name === "msr-setup").length, 4);
  });

  it("audit mode logs what would be denied, rules, defaults and objects alike", () => {
    const policy = resolvePolicy(loadPolicyFile(join(SHIPPED, "audit-mode.yaml")), kernel);
    assert.equal(policy.mode, "audit");
    const c = compilePolicy(policy, regions);
    assert.ok(c.rules.every((r) => r.verdict === "log"));
    const d = evaluate(c, write(SYMBOLS.gv_check_credentials.value, SYMBOLS.kmain.value));
    assert.equal(d.verdict, "log");
    assert.equal(d.reason, "write to a protected kernel region (audit mode: would deny)");
    const m = emptyContext("msr-write");
    m.msrIndex = 0xc0000082;
    assert.equal(evaluate(c, m).verdict, "log");
    assert.equal(evaluate(c, emptyContext("crash")).verdict, "restart");
    assert.equal(effectiveVerdict(policy.mode, "deny-fault"), "log");
    assert.equal(effectiveVerdict(undefined, "deny-fault"), "deny-fault");
    // The same policy enforced denies.
    const enforced = compilePolicy({ ...policy, mode: "enforce" }, regions);
    assert.equal(evaluate(enforced, m).verdict, "deny-fault");
  });

  it("refuses a policy whose lists expand past the table size", () => {
    const names = Array.from({ length: 12 }, (_, i) => `0x${(0x100 + i).toString(16)}`).join(", ");
    const text = `version: 1\nrules:\n  - {name: r, event: msr-write, msr: [${names}], originator: [kmain, gv_init_msrs, gv_legit_patch, gv_check_credentials], cpl: 0, action: deny}\n  - {name: s, event: crash, action: restart}\n`;
    // 12 MSRs x 4 originators = 48 rules: fits.
    assert.equal(compiled(text).policy.rules.length, 49);
    const many = text
      .replace("cpl: 0", "cpl: 0")
      .replace(`msr: [${names}]`, `msr: [${names}, ${names.replace(/0x1/g, "0x2")}, ${names.replace(/0x1/g, "0x3")}]`);
    resolveFails(
      many,
      /^p\.yaml:3:3: rules: 145 rules once lists of regions, originators and MSRs are expanded, at most 128$/,
    );
  });
});

describe("policy files: compile and load round trip", () => {
  for (const src of GOOD_POLICY_FILES) {
    it(`${src.split("/").slice(-2).join("/")}: the decoded table equals the compiled rules`, () => {
      const r = compilePolicyForKernel(loadPolicyFile(src), kernel);
      const back = decodeRuleTable(r.compiled.table);
      assert.deepEqual(back.rules, r.compiled.rules);
      assert.deepEqual(back.defaults, r.compiled.defaults);
      assert.equal(r.compiled.rules.length, r.policy.rules.length);
      // Every kind's default and every rule survive: evaluation over the decoded table agrees.
      const fromTable = { ...r.compiled, rules: back.rules, defaults: back.defaults };
      for (const kind of [
        "protected-write",
        "msr-write",
        "cpu-exception",
        "crash",
        "hang",
        "integrity",
      ] as EventKind[]) {
        const c = emptyContext(kind);
        c.regionId = TEXT_ID;
        c.regs.rip = BigInt(SYMBOLS.gv_legit_patch.value);
        c.msrIndex = 0xc0000082;
        c.vector = 14;
        c.cpl = 3;
        assert.deepEqual(evaluate(fromTable, c), evaluate(r.compiled, c));
      }
    });
  }

  it("compiles the shipped default policy against the built gv-kernel like the built-in one", (t) => {
    if (!existsSync(GV_KERNEL)) {
      t.skip("guest/out/gv-kernel.elf is not built");
      return;
    }
    const r = compilePolicyFile(join(SHIPPED, "default.yaml"), GV_KERNEL);
    assert.deepEqual(r.compiled.table, compilePolicy(DEFAULT_POLICY, r.regions).table);
    assert.deepEqual(
      r.regions.map((g) => g.name),
      [".text", ".rodata", ".utext", ".benchpage"],
    );
  });
});

describe("docs/policy.md", () => {
  it("every worked example loads and resolves", () => {
    const text = readFileSync(join(SHIPPED, "..", "docs", "policy.md"), "utf8");
    const blocks = [...text.matchAll(/```(yaml|json)\n([\s\S]*?)```/g)];
    assert.ok(blocks.length >= 7, `${blocks.length} examples`);
    for (const [, lang, body] of blocks) {
      const file = parsePolicyText(body!, `example.${lang}`);
      const policy = resolvePolicy(file, kernel);
      assert.ok(policy.rules.length > 0, file.name);
      compilePolicy(policy, regions);
    }
  });

  it("shows the error the CLI gives for an unknown top-level field", () => {
    const text = readFileSync(join(SHIPPED, "..", "docs", "policy.md"), "utf8");
    const shown = /guardvisor: error: (bad\.yaml:.*)/.exec(text)?.[1];
    assert.throws(
      () => parsePolicyText("version: 1\nname: x\nfrobnicate: 1\n", "bad.yaml"),
      (e: unknown) => e instanceof GuardvisorError && e.message === shown,
    );
  });
});
