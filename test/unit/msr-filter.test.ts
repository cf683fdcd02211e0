import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_POLICY } from "../../src/decide/policy.js";
import { filteredMsrs, msrFilterRanges, PROTECTED_MSRS } from "../../src/vmm/guest-vm.js";

describe("MSR filter ranges", () => {
  it("filters the syscall/sysenter MSRs and EFER by default, in two runs", () => {
    const msrs = filteredMsrs(DEFAULT_POLICY);
    assert.deepEqual(
      msrs,
      [...PROTECTED_MSRS].sort((a, b) => a - b),
    );
    const r = msrFilterRanges(msrs, 2);
    assert.deepEqual(
      r.map((x) => [x.base, x.nmsrs, x.flags]),
      [
        [0x174, 3, 2],
        [0xc0000080, 5, 2],
      ],
    );
    assert.ok(
      r.every((x) => x.bitmap.every((b) => b === 0)),
      "every bit clear: every write exits",
    );
  });

  it("adds the MSRs a policy names, merging neighbours", () => {
    const msrs = filteredMsrs({
      ...DEFAULT_POLICY,
      objects: {
        msrs: [
          { index: 0x1d9, name: "DEBUGCTL", action: "deny" },
          { index: 0x177, name: "0x177", action: "deny" },
        ],
      },
    });
    assert.deepEqual(
      msrFilterRanges(msrs, 2).map((x) => [x.base, x.nmsrs]),
      [
        [0x174, 4],
        [0x1d9, 1],
        [0xc0000080, 5],
      ],
    );
  });
});
