/**
 * The IDC region as a thread attaches to it: the shared memory (by handle,
 * so a worker thread maps the same pages), its layout, the health VM's
 * control word and the rings' host-side counters.
 */
import { GuestMemory, type GuestMemoryHandle } from "../kvm/guest-memory.js";
import { IdcHostCounters, IdcRegion } from "./channel.js";
import { HmControl } from "./hm-control.js";
import type { IdcLayout } from "./layout.js";

/** The IDC region as a worker attaches to it. */
export interface IdcAttach {
  memory: GuestMemoryHandle;
  layout: IdcLayout;
  /** The HmControl shared words. */
  control: SharedArrayBuffer;
  /** The IDC rings' counters in host memory (IdcHostCounters). */
  counters: SharedArrayBuffer;
}

/** The IDC region and the health VM's control word, as this thread sees them. */
export function attachIdc(a: IdcAttach): { region: IdcRegion; control: HmControl } {
  const mem = GuestMemory.attach(a.memory);
  return {
    region: new IdcRegion(mem.bytes.buffer as ArrayBuffer, a.layout, new IdcHostCounters(a.counters)),
    control: new HmControl(a.control),
  };
}
