/**
 * The dispatcher path at native speed: recorded VM exits replayed through
 * the real exit dispatcher, with no KVM. What a vCPU thread does between two
 * KVM_RUNs, except the ioctl: decode the exit from the kvm_run page (the
 * registers travel in the page, KVM_CAP_SYNC_REGS, as in production), classify
 * the write with the protection map, locate the writing instruction through
 * the guest's page tables, capture the context, decide with the `vmm` decider
 * and the default policy, apply the verdict, and post the event to the VM's
 * owner as the vCPU worker does (through the event ring, event-ring.ts, with
 * a MessagePort for its doorbell).
 *
 * The guest is the real gv-kernel image loaded as GuestVm loads it (segments,
 * boot page tables), sealed as the kernel seals itself at boot, so every exit
 * also pays the sealed-state check. The exits are the ones the guest makes:
 * the text-patch scenario's 1-, 8- and 4-byte stores into .text, a 2-byte
 * stack store after a stack pivot into .text, a write to the sealed LSTAR,
 * and a #UD from ring 3 captured at the exception entry (the breakpoint exit
 * with the frame on the stack, then the step over it). RIP is where KVM leaves
 * it: after the instruction that wrote.
 */
import { MessageChannel } from "node:worker_threads";
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import type { DecisionResult } from "../decide/decider.js";
import { VmmDecider } from "../decide/decider.js";
import { type CompiledPolicy, compilePolicy, DEFAULT_POLICY } from "../decide/policy.js";
import { IoBus } from "../devices/bus.js";
import { loadElf } from "../elf/kernel-image.js";
import { GuardvisorError } from "../errors.js";
import { RunPage } from "../kvm/exits.js";
import { GuestMemory } from "../kvm/guest-memory.js";
import { K, kernelLayout } from "../kvm/native.js";
import {
  decodeRegs,
  decodeSregs,
  encodeRegs,
  encodeSregs,
  type Regs,
  type Segment,
  type Sregs,
  zeroRegs,
} from "../kvm/structs.js";
import { type ContextRecord, decodeContext } from "../model/context.js";
import { makeRegions } from "../model/regions.js";
import { bootSregs, MIB, writeBootArea } from "../vmm/boot.js";
import { type CapturedEvent, type CpuAccess, ExitDispatcher } from "../vmm/dispatcher.js";
import { DEFAULT_EVENT_SLOTS, EventRing, ringEventSender } from "../vmm/event-ring.js";
import { DR6_B0, DR6_BS, ExceptionCapture } from "../vmm/exception-capture.js";
import { loadSegments, PROTECTED_MSRS, virtualRanges } from "../vmm/guest-vm.js";
import { ProtectionMap } from "../vmm/protection.js";
import type { WorkerMessage } from "../vmm/vcpu-protocol.js";
import { Samples } from "./stats.js";

/** The replayed exit kinds, in the order they are reported. */
export const DISPATCH_KINDS = ["write-1", "write-2", "write-4", "write-8", "msr-write", "exception"] as const;
export type DispatchKind = (typeof DISPATCH_KINDS)[number];

const MEM_MIB = 32;
const VM_ID = 1;
/** Every seal the kernel sets at boot (guest/src/main.c). */
const SEAL_ALL =
  ABI_CONSTANTS.SEAL_MSRS |
  ABI_CONSTANTS.SEAL_IDT |
  ABI_CONSTANTS.SEAL_GDT |
  ABI_CONSTANTS.SEAL_CR |
  ABI_CONSTANTS.SEAL_PAGING;
const LSTAR = 0xc0000082;
const UD_VECTOR = 6;
const USER_CS = 0x23;
const USER_SS = 0x1b;

/** One recorded exit: the kvm_run page as KVM leaves it. */
export interface RecordedExit {
  kind: DispatchKind;
  /** The kvm_run page(s) of one sample: an exception is two exits (the capture and the step over the entry). */
  pages: Uint8Array[];
  /** The RIP the event must name: the writing instruction (a write), the faulting one (an exception), RIP (an MSR write). */
  eventRip: bigint;
}

export interface DispatchReplay {
  /** Per kind: one sample per replayed event, in µs. */
  samples: Map<DispatchKind, Samples>;
  decidedBy: Record<DecisionResult["decidedBy"], number>;
  /** Events posted to the owner's port (and received there). */
  eventsPosted: number;
  eventsReceived: number;
  verdicts: Record<string, number>;
  /** Events that did not name the instruction the exit came from (the locator missed it): must be 0. */
  wrongRip: number;
}

export interface DispatchFixture {
  exits: RecordedExit[];
  /** The default policy compiled for this kernel's regions (what the `vmm` decider decides with). */
  policy: CompiledPolicy;
  /** The context record of the last event of a kind (after a replay): what a decider is asked. */
  lastContext(kind: DispatchKind): ContextRecord | undefined;
  /** Replay `samples` events of every kind (after `warmup` of each), kinds interleaved. */
  replay(samples: number, warmup: number): Promise<DispatchReplay>;
  /** The bytes of kernel .text the replayed writes aimed at, before and now (they must not change: deny). */
  textIntact(): boolean;
  release(): void;
}

function symbol(image: ReturnType<typeof loadElf>["image"], name: string): number {
  const s = image.symbols.find((x) => x.name === name);
  if (!s)
    throw new GuardvisorError("CONFIG_INVALID", `the kernel has no symbol ${name} (rebuild it with 'npm run build')`);
  return s.value;
}

/** The special registers of the running kernel: boot state, its IDT and GDT loaded, CPL `cpl`. */
function kernelSregs(idt: number, gdt: number): Sregs {
  const seg: Segment = {
    base: 0n,
    limit: 0,
    selector: 0,
    type: 0,
    present: 0,
    dpl: 0,
    db: 0,
    s: 0,
    l: 0,
    g: 0,
    avl: 0,
    unusable: 1,
  };
  const base: Sregs = {
    cs: seg,
    ds: seg,
    es: seg,
    fs: seg,
    gs: seg,
    ss: seg,
    tr: seg,
    ldt: seg,
    gdt: { base: 0n, limit: 0 },
    idt: { base: 0n, limit: 0 },
    cr0: 0n,
    cr2: 0n,
    cr3: 0n,
    cr4: 0n,
    cr8: 0n,
    efer: 0n,
    apicBase: 0xfee00900n,
  };
  return {
    ...bootSregs(base),
    idt: { base: BigInt(idt), limit: 256 * 16 - 1 },
    gdt: { base: BigInt(gdt), limit: 7 * 8 - 1 },
  };
}

/** A kvm_run page with KVM's registers in it, for one exit. */
class PageWriter {
  readonly size = kernelLayout("kvm_run").size;
  private readonly L = kernelLayout("kvm_run");

  page(regs: Regs, sregs: Sregs, fill: (v: DataView, off: (f: string) => number) => void): Uint8Array {
    const bytes = new Uint8Array(this.size);
    const v = new DataView(bytes.buffer);
    const off = (f: string) => this.L.off(f);
    v.setBigUint64(off("kvm_valid_regs"), BigInt(K("KVM_SYNC_X86_REGS") | K("KVM_SYNC_X86_SREGS")), true);
    encodeRegs(regs, v, off("s.regs"));
    encodeSregs(sregs, v, off("s.sregs"));
    fill(v, off);
    return bytes;
  }

  mmioWrite(regs: Regs, sregs: Sregs, gpa: number, data: Uint8Array): Uint8Array {
    if (data.length < 1 || data.length > 8) throw new GuardvisorError("INTERNAL", `MMIO write of ${data.length} bytes`);
    return this.page(regs, sregs, (v, off) => {
      v.setUint32(off("exit_reason"), K("KVM_EXIT_MMIO"), true);
      v.setBigUint64(off("mmio.phys_addr"), BigInt(gpa), true);
      new Uint8Array(v.buffer).set(data, off("mmio.data"));
      v.setUint32(off("mmio.len"), data.length, true);
      v.setUint8(off("mmio.is_write"), 1);
    });
  }

  msrWrite(regs: Regs, sregs: Sregs, index: number, value: bigint): Uint8Array {
    return this.page(regs, sregs, (v, off) => {
      v.setUint32(off("exit_reason"), K("KVM_EXIT_X86_WRMSR"), true);
      v.setUint32(off("msr.index"), index, true);
      v.setBigUint64(off("msr.data"), value, true);
    });
  }

  debug(regs: Regs, sregs: Sregs, pc: bigint, dr6: bigint): Uint8Array {
    return this.page(regs, sregs, (v, off) => {
      v.setUint32(off("exit_reason"), K("KVM_EXIT_DEBUG"), true);
      v.setUint32(off("debug.exception"), 1, true);
      v.setBigUint64(off("debug.pc"), pc, true);
      v.setBigUint64(off("debug.dr6"), dr6, true);
      v.setBigUint64(off("debug.dr7"), 0x401n, true);
    });
  }
}

/**
 * The vCPU as the worker sees it with KVM_CAP_SYNC_REGS: registers decoded
 * from and encoded into the kvm_run page. What would be an ioctl (an injected
 * exception, an MSR write KVM performs, guest debug) is counted, not made.
 */
class RunPageCpu implements CpuAccess {
  ioctls = 0;
  private readonly REGS = K("KVM_SYNC_X86_REGS");
  private readonly SREGS = K("KVM_SYNC_X86_SREGS");
  constructor(private readonly run: RunPage) {}
  getRegs = (): Regs => decodeRegs(this.run.view, this.run.syncRegsAt);
  setRegs = (r: Regs): void => {
    encodeRegs(r, this.run.view, this.run.syncRegsAt);
    this.run.dirtyRegs |= this.REGS;
  };
  getSregs = (): Sregs => decodeSregs(this.run.view, this.run.syncSregsAt);
  setSregs = (s: Sregs): void => {
    encodeSregs(s, this.run.view, this.run.syncSregsAt);
    this.run.dirtyRegs |= this.SREGS;
  };
  injectException = (): void => {
    this.ioctls++;
  };
  cancelException = (): void => {
    this.ioctls++;
  };
  setMsrResult = (e: 0 | 1): void => this.run.setMsrResult(e);
  setMsr = (): boolean => {
    this.ioctls++;
    return true;
  };
  setGuestDebug = (): void => {
    this.ioctls++;
  };
}

/** Build the guest image, the dispatcher and the recorded exits. */
export function dispatchFixture(kernel: Uint8Array): DispatchFixture {
  const memSize = MEM_MIB * MIB;
  const { image, regions: elfRegions } = loadElf(kernel, memSize);
  const regions = makeRegions(elfRegions, memSize);
  const protection = new ProtectionMap(regions, memSize);
  const memory = GuestMemory.allocate(memSize);
  let released = false;
  try {
    loadSegments(memory, image);
    writeBootArea(memory, { memSize, cmdline: "", role: ABI_CONSTANTS.ROLE_GUEST, vmId: VM_ID });

    const sym = (n: string) => symbol(image, n);
    const sregs = kernelSregs(sym("gv_idt"), sym("gdt"));
    const entry = BigInt(sym("gv_exception_entry"));
    const check = sym("gv_check_credentials");
    const patch = sym("evil_module_text_patch");
    const stackTop = sym("boot_stack") + 0x4000;
    const w = new PageWriter();
    const regs = (r: Partial<Regs>): Regs => ({ ...zeroRegs(), rflags: 0x46n, rsp: BigInt(stackTop - 0x100), ...r });
    const patchValue = 0x9090c300000001b8n;
    const le = (v: bigint, n: number) => Uint8Array.from({ length: n }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
    const utext = sym("__utext_start");
    const gdtInit = sym("gdt_init");
    const mmio = (kind: DispatchKind, writer: number, len: number, r: Partial<Regs>, gpa: number, v: bigint) => ({
      kind,
      pages: [w.mmioWrite(regs({ ...r, rip: BigInt(writer + len) }), sregs, gpa, le(v, Number(kind.slice(6))))],
      eventRip: BigInt(writer),
    });
    const exits: RecordedExit[] = [
      // evil_module_text_patch: movabs $v,%rax (10 bytes); movb $0xb8 (7); mov %rax (7); movl $imm (10), all RIP-relative.
      mmio("write-1", patch + 10, 7, { rax: patchValue }, check, 0xb8n),
      // gdt_init's `mov %ax,0x6(%rsp)` (5 bytes at +0x80) after a stack pivot into .text.
      mmio("write-2", gdtInit + 0x80, 5, { rax: 0x37n, rsp: BigInt(check) }, check + 6, 0x37n),
      mmio("write-4", patch + 24, 10, { rax: patchValue }, check + 4, 0x9090c301n),
      mmio("write-8", patch + 17, 7, { rax: patchValue }, check, patchValue),
      {
        kind: "msr-write",
        pages: [w.msrWrite(regs({ rip: BigInt(patch), rcx: BigInt(LSTAR) }), sregs, LSTAR, BigInt(patch))],
        eventRip: BigInt(patch),
      },
      {
        // A #UD from ring 3: the breakpoint on the entry (frame on the kernel stack), then the step over it.
        kind: "exception",
        pages: [
          w.debug(regs({ rip: entry, rsp: BigInt(stackTop - 0x200) }), sregs, entry, DR6_B0),
          w.debug(regs({ rip: entry + 2n, rsp: BigInt(stackTop - 0x208) }), sregs, entry + 2n, DR6_BS),
        ],
        eventRip: BigInt(utext + 0x40),
      },
    ];
    // The frame the exception's stub pushed: vector, error code, rip, cs, rflags, rsp, ss.
    const frameAt = stackTop - 0x200;
    [BigInt(UD_VECTOR), 0n, BigInt(utext + 0x40), BigInt(USER_CS), 0x202n, 0x7fff_f000n, BigInt(USER_SS)].forEach(
      (q, i) => {
        memory.writeU64(frameAt + 8 * i, q);
      },
    );

    const run = new RunPage(new ArrayBuffer(w.size));
    const cpu = new RunPageCpu(run);
    const exceptions = new ExceptionCapture(entry, cpu, { enable: 1, singlestep: 2, useHwBp: 0x20000 });
    const policy = compilePolicy(DEFAULT_POLICY, regions);
    const channel = new MessageChannel();
    const decidedBy: DispatchReplay["decidedBy"] = { vmm: 0, "hm-vm": 0, failsafe: 0 };
    const verdicts: Record<string, number> = {};
    let posted = 0;
    let received = 0;
    let wrongRip = 0;
    let current: RecordedExit | undefined;
    const lastRecord = new Map<DispatchKind, Uint8Array>();
    // The owner's side, as VcpuThread takes them: the ring first, then the message (a doorbell, or an overflow event).
    const ring = EventRing.create();
    const take = () => {
      received += ring.drain().length;
    };
    channel.port2.on("message", (m: WorkerMessage) => {
      take();
      if (m.type === "event") {
        received++;
        ring.overflowHandled();
      }
    });
    const send = ringEventSender(ring, (m: WorkerMessage) => channel.port1.postMessage(m));
    const dispatcher = new ExitDispatcher({
      vmId: VM_ID,
      vcpuId: 0,
      cpu,
      memory,
      protection,
      bus: new IoBus(),
      decider: new VmmDecider(policy),
      sink: {
        event: (event: CapturedEvent) => {
          decidedBy[event.decidedBy]++;
          if (event.rip !== current?.eventRip) wrongRip++;
          if (current) lastRecord.set(current.kind, event.record);
          verdicts[event.verdict] = (verdicts[event.verdict] ?? 0) + 1;
          posted++;
          send(event);
        },
      },
      exceptions,
      protectedMsrs: PROTECTED_MSRS,
      protectedVirtual: virtualRanges(image, regions),
    });
    // The kernel seals itself at boot, with its own registers loaded.
    run.bytes.set(exits[0]?.pages[0] ?? new Uint8Array(0));
    dispatcher.seal(SEAL_ALL);
    exceptions.arm();
    const textBefore = memory.slice(check, 16).slice();

    const replayOne = (e: RecordedExit): number => {
      current = e;
      let us = 0;
      for (const page of e.pages) {
        run.bytes.set(page); // KVM fills the page on the way out of KVM_RUN
        const t0 = process.hrtime.bigint();
        const action = dispatcher.dispatch(run.decode());
        us += Number(process.hrtime.bigint() - t0) / 1000;
        if (action.kind !== "continue") {
          throw new GuardvisorError("INTERNAL", `replayed ${e.kind} exit ended the guest: ${JSON.stringify(action)}`);
        }
      }
      return us;
    };

    return {
      exits,
      policy,
      lastContext: (kind) => {
        const r = lastRecord.get(kind);
        return r ? decodeContext(r) : undefined;
      },
      async replay(samples: number, warmup: number): Promise<DispatchReplay> {
        const out = new Map<DispatchKind, Samples>(DISPATCH_KINDS.map((k) => [k, new Samples()]));
        const before = { ...decidedBy };
        const postedBefore = posted;
        const wrongBefore = wrongRip;
        // Rounds between two turns of the owner's side: fewer events than the ring holds, as an
        // owner on its own thread keeps up (a full ring would send events as messages instead).
        const batch = Math.max(1, Math.floor(DEFAULT_EVENT_SLOTS / (2 * exits.length)));
        for (let i = 0; i < warmup + samples; i++) {
          for (const e of exits) {
            const us = replayOne(e);
            if (i >= warmup) out.get(e.kind)?.push(us);
          }
          // Let the owner's side of the port take the events (as the main thread does between exits).
          if (i % batch === batch - 1) await new Promise((r) => setImmediate(r));
        }
        const deadline = Date.now() + 5000;
        while (received < posted && Date.now() < deadline) {
          take(); // (the owner drains before every message; here, also while waiting for the last ones)
          await new Promise((r) => setImmediate(r));
        }
        const events = dispatcher.stats.events;
        if (posted - postedBefore !== (warmup + samples) * exits.length || events < posted) {
          throw new GuardvisorError(
            "GUEST_FAULT",
            `replay: ${posted - postedBefore} events for ${(warmup + samples) * exits.length} replayed exits`,
          );
        }
        return {
          samples: out,
          decidedBy: {
            vmm: decidedBy.vmm - before.vmm,
            "hm-vm": decidedBy["hm-vm"] - before["hm-vm"],
            failsafe: decidedBy.failsafe - before.failsafe,
          },
          eventsPosted: posted - postedBefore,
          eventsReceived: received,
          verdicts: { ...verdicts },
          wrongRip: wrongRip - wrongBefore,
        };
      },
      textIntact: () => memory.slice(check, 16).every((b, i) => b === textBefore[i]),
      release() {
        if (released) return;
        released = true;
        channel.port1.close();
        channel.port2.close();
        memory.release();
      },
    };
  } catch (e) {
    if (!released) memory.release();
    throw e;
  }
}
