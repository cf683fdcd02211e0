/**
 * The page-table seal: the walk of every protected virtual page is pinned at
 * HC_SEAL; a later change to it (or to CR3) is found on an exit, decided as an
 * integrity event and, on deny, put back with the guest's TLB flushed.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { ABI_CONSTANTS as C } from "../../src/abi/guest-abi.js";
import type { Sregs } from "../../src/kvm/structs.js";
import { writePageTables } from "../../src/vmm/boot.js";
import { translate } from "../../src/vmm/paging.js";
import { PagingSeal } from "../../src/vmm/paging-seal.js";
import { dispatchFixture, FakeCpu, MEM } from "../support/dispatch.js";

const { mem, setup } = dispatchFixture();
after(() => mem.release());

const TEXT = { name: ".text", start: 0x100000n, end: 0x100800n };
const PTE_TEXT = C.BOOT_PT_LOW + 8 * 0x100;
const COPY = 0x180000n;

function freshTables(): void {
  writePageTables(mem, MEM);
}

const hypercallExit = () => ({
  kind: "io-out" as const,
  port: C.PORT_HYPERCALL,
  size: 4,
  count: 1,
  data: new Uint8Array(4),
});

describe("PagingSeal", () => {
  it("pins the walk of each protected page and sees only changes to its translation", () => {
    freshTables();
    const seal = new PagingSeal(mem);
    assert.deepEqual(seal.changes(), []);
    seal.seal(BigInt(C.BOOT_PML4), [TEXT]);
    assert.equal(seal.pinnedEntries, 4, "PML4, PDPT, PD entries and one PTE");
    assert.deepEqual(seal.changes(), []);

    // Accessed, dirty and the ignored bits are not a translation.
    const pte = mem.readU64(PTE_TEXT);
    mem.writeU64(PTE_TEXT, pte | 0x60n | 0xe00n);
    assert.deepEqual(seal.changes(), []);

    // Another page of the same table: not pinned.
    mem.writeU64(C.BOOT_PT_LOW + 8 * 0x1ff, COPY | 3n);
    assert.deepEqual(seal.changes(), []);

    // The protected page pointed elsewhere: a change, and restore puts it back.
    mem.writeU64(PTE_TEXT, COPY | 3n);
    assert.equal(translate(mem, BigInt(C.BOOT_PML4), 0x100000n), Number(COPY));
    const [c] = seal.changes();
    assert.deepEqual(
      { entry: c?.entry, from: c?.from, to: c?.to, va: c?.va, name: c?.name },
      { entry: PTE_TEXT, from: pte, to: COPY | 3n, va: 0x100000n, name: ".text" },
    );
    seal.restore(PTE_TEXT);
    assert.deepEqual(seal.changes(), []);
    assert.equal(translate(mem, BigInt(C.BOOT_PML4), 0x100000n), 0x100000);

    // Permissions count too (a user-accessible kernel page).
    mem.writeU64(PTE_TEXT, pte | 4n);
    assert.equal(seal.changes().length, 1);
    seal.restore(PTE_TEXT);
  });

  it("pins a not-present entry: mapping a protected address later is a change", () => {
    freshTables();
    const seal = new PagingSeal(mem);
    const high = { name: "high", start: 0x4000_0000n, end: 0x4000_1000n }; // PDPT[1]: not present at 4 MiB
    seal.seal(BigInt(C.BOOT_PML4), [high]);
    assert.deepEqual(seal.changes(), []);
    mem.writeU64(C.BOOT_PDPT + 8, BigInt(C.BOOT_PD) | 3n);
    assert.equal(seal.changes()[0]?.entry, C.BOOT_PDPT + 8);
    seal.restore(C.BOOT_PDPT + 8);
    assert.equal(mem.readU64(C.BOOT_PDPT + 8), 0n);
  });

  it("never reads outside guest RAM, whatever the tables say", () => {
    freshTables();
    const seal = new PagingSeal(mem);
    mem.writeU64(C.BOOT_PD, 0x7fff_ffff_f000n | 1n); // the low page table far outside RAM
    seal.seal(BigInt(C.BOOT_PML4), [TEXT]);
    assert.equal(seal.pinnedEntries, 3);
    assert.deepEqual(seal.changes(), []);
    freshTables();
  });
});

describe("the paging seal in the dispatcher", () => {
  function sealedVm() {
    freshTables();
    const cpu = new FakeCpu();
    const loaded: Sregs[] = [];
    const set = cpu.setSregs;
    cpu.setSregs = (s: Sregs) => {
      loaded.push({ ...s });
      set(s);
    };
    const t = setup(undefined, { protectedVirtual: [TEXT] }, cpu);
    t.d.seal(C.SEAL_PAGING);
    assert.equal(t.d.stats.pinnedEntries, 5, "the .text walk and the IDT's (at 0)");
    return { ...t, loaded };
  }

  it("puts a remapped protected page back on the next exit and flushes the guest TLB", () => {
    const { d, events, loaded } = sealedVm();
    const pte = mem.readU64(PTE_TEXT);
    assert.deepEqual(d.dispatch(hypercallExit()), { kind: "continue" });
    assert.equal(events.length, 0);

    mem.writeU64(PTE_TEXT, COPY | 3n);
    assert.deepEqual(d.dispatch(hypercallExit()), { kind: "continue" });
    assert.deepEqual(
      { kind: events[0]?.kind, object: events[0]?.object, verdict: events[0]?.verdict, rule: events[0]?.rule },
      { kind: "integrity", object: C.INTEGRITY_PAGING, verdict: "deny", rule: "protect-page-tables" },
    );
    assert.match(events[0]?.note ?? "", /page-table entry at 0x7800 translating \.text \(0x100000\) changed/);
    assert.equal(mem.readU64(PTE_TEXT), pte, "the sealed entry is back");
    assert.equal(loaded.length, 2, "a CR4 change to reset the MMU, then the registers as they were");
    assert.equal((loaded[0]?.cr4 ?? 0n) ^ (loaded[1]?.cr4 ?? 0n), 1n << 7n);
    d.dispatch(hypercallExit());
    assert.equal(events.length, 1, "nothing more once repaired");
  });

  it("loads the sealed CR3 back when the guest switched to other tables", () => {
    const { d, cpu, events } = sealedVm();
    const s = cpu.getSregs();
    cpu.sregsOverride = { ...s, cr3: 0x20_0000n | 0x8n };
    assert.deepEqual(d.dispatch(hypercallExit()), { kind: "continue" });
    assert.equal(events[0]?.object, C.INTEGRITY_CR3);
    assert.match(events[0]?.note ?? "", /CR3 changed from the sealed page tables at 0x1000 to 0x200008/);
    assert.equal(cpu.getSregs().cr3, 0x1008n, "sealed root, the guest's flag bits kept");
  });

  it("does nothing before the guest seals its paging", () => {
    freshTables();
    const { d, events } = setup(undefined, { protectedVirtual: [TEXT] }, new FakeCpu());
    mem.writeU64(PTE_TEXT, COPY | 3n);
    d.dispatch(hypercallExit());
    assert.equal(events.length, 0);
    freshTables();
  });

  it("follows the policy: restart ends the VM", () => {
    freshTables();
    const policy = {
      name: "strict",
      rules: [],
      defaults: {
        "protected-write": "deny",
        "msr-write": "deny",
        "cpu-exception": "log",
        crash: "restart",
        hang: "restart",
        integrity: "restart",
      } as const,
    };
    const { d, events } = setup(policy, { protectedVirtual: [TEXT] }, new FakeCpu());
    d.seal(C.SEAL_PAGING);
    mem.writeU64(PTE_TEXT, COPY | 3n);
    const a = d.dispatch(hypercallExit());
    assert.equal(a.kind === "stop" && a.outcome, "restart");
    assert.equal(events[0]?.verdict, "restart");
    freshTables();
  });
});
