/**
 * Registers through the kvm_run page (KVM_CAP_SYNC_REGS): what Vcpu reads and
 * writes there must be exactly what the vCPU has, seen through the ioctls, and
 * a change made in the page must reach KVM before any ioctl that follows it.
 * And a kick ends KVM_RUN without a signal handler running on the vCPU thread.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { GuestMemory } from "../../src/kvm/guest-memory.js";
import { Kvm, releaseVcpu, Vcpu, type VcpuHandle, type Vm } from "../../src/kvm/kvm.js";
import { native } from "../../src/kvm/native.js";
import { bootRegs, bootSregs, MIB, writeBootArea } from "../../src/vmm/boot.js";
import { skipWithoutKvm } from "../support/kvm.js";

const CODE = 0x10_0000;
/** out 0x10,al; add rax,rbx; out 0x10,al; hlt */
const PROGRAM = [0xe6, 0x10, 0x48, 0x01, 0xd8, 0xe6, 0x10, 0xf4];

describe("vCPU registers in the kvm_run page", { skip: skipWithoutKvm }, () => {
  let kvm: Kvm;
  let vm: Vm;
  let mem: GuestMemory;
  let handle: VcpuHandle;

  before(() => {
    kvm = Kvm.open();
    vm = kvm.createVm();
    mem = GuestMemory.allocate(4 * MIB);
    writeBootArea(mem, { memSize: mem.size, cmdline: "", role: 0, vmId: 0 });
    mem.write(CODE, Uint8Array.from(PROGRAM));
    vm.setUserMemoryRegion({ slot: 0, gpa: 0, size: mem.size, hostAddr: mem.hostAddressOf(0), readonly: false });
    handle = vm.createVcpu(0);
    const setup = new Vcpu(handle);
    setup.setCpuid2(kvm.getSupportedCpuid());
    setup.setSregs(bootSregs(setup.getSregs()));
  });

  after(() => {
    releaseVcpu(handle);
    mem.release();
    vm.close();
    kvm.close();
  });

  it("reads, writes and hands over pending changes exactly as the ioctls would", () => {
    const cpu = new Vcpu(handle);
    const ioctl = new Vcpu(handle); // the same vCPU, seen only through KVM_GET_*
    assert.equal(cpu.useSyncRegs(handle.syncRegs), true, `KVM_CAP_SYNC_REGS reports ${handle.syncRegs}`);
    assert.equal(cpu.syncsRegs, true);

    // Before any exit, reads come through the ioctls.
    assert.deepEqual(cpu.getSregs(), ioctl.getSregs());

    // A write stays in the page until KVM_RUN loads it.
    cpu.setRegs({ ...bootRegs(CODE), rax: 1n, rbx: 2n });
    assert.notEqual(ioctl.getRegs().rip, BigInt(CODE));
    let exit = cpu.runOnce();
    assert.equal(exit.kind, "io-out");
    assert.equal(exit.kind === "io-out" && exit.data[0], 1);

    // After the exit, the page holds what KVM has. RIP is at the OUT (SVM and VMX complete it on the
    // next entry) or past it (PVM completes it before the exit); the page and the ioctl agree on which.
    const OUT_LEN = 2;
    assert.ok([BigInt(CODE), BigInt(CODE + OUT_LEN)].includes(cpu.getRegs().rip), `rip ${cpu.getRegs().rip}`);
    assert.deepEqual(cpu.getRegs(), ioctl.getRegs());
    assert.deepEqual(cpu.getSregs(), ioctl.getSregs());

    // An ioctl that changes vCPU state first hands KVM what the page has pending.
    cpu.setRegs({ ...cpu.getRegs(), rbx: 5n });
    cpu.setGuestDebug(0);
    assert.equal(ioctl.getRegs().rbx, 5n);
    // ... and afterwards the page is read again from KVM.
    ioctl.setRegs({ ...ioctl.getRegs(), rbx: 40n });
    assert.equal(cpu.getRegs().rbx, 40n);
    exit = cpu.runOnce();
    assert.equal(exit.kind === "io-out" && exit.data[0], 41);

    // Special registers: changed in the page, loaded at the next entry, fields we do not model kept.
    const idt = { base: 0x20_0000n, limit: 0xfff };
    cpu.setSregs({ ...cpu.getSregs(), idt });
    assert.deepEqual(ioctl.getSregs().idt, { base: 0n, limit: 0 });
    exit = cpu.runOnce();
    assert.equal(exit.kind, "hlt");
    assert.deepEqual(ioctl.getSregs().idt, idt);
    assert.deepEqual(cpu.getSregs(), ioctl.getSregs());
  });

  it("a kick before entry still loads pending changes, and the page stays true", () => {
    const cpu = new Vcpu(handle);
    const ioctl = new Vcpu(handle);
    cpu.useSyncRegs(handle.syncRegs);
    cpu.setRegs({ ...bootRegs(CODE), rax: 7n });
    cpu.run.immediateExit = true;
    assert.equal(cpu.runOnce().kind, "interrupted");
    cpu.run.immediateExit = false;
    assert.equal(ioctl.getRegs().rax, 7n);
    assert.deepEqual(cpu.getRegs(), ioctl.getRegs());
  });

  it("a kick that comes outside KVM_RUN ends the next one at once, and is taken: the run after it goes on", () => {
    const cpu = new Vcpu(handle);
    cpu.useSyncRegs(handle.syncRegs);
    cpu.setRegs({ ...bootRegs(CODE), rax: 3n });
    // This thread now keeps the kick signal blocked outside KVM_RUN: the kick stays pending, no handler runs.
    const tid = native().prepareVcpuThread(handle.fd);
    native().kickThread(tid);
    assert.equal(cpu.runOnce().kind, "interrupted");
    const exit = cpu.runOnce();
    assert.equal(exit.kind === "io-out" && exit.data[0], 3);
  });
});
