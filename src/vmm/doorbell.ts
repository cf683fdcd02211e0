/**
 * The health VM's side of the IDC channel in a vCPU thread: the doorbell
 * hypercall that parks the health VM's vCPU until there is work.
 */
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import type { Hypercalls } from "../devices/hypercall.js";
import { attachIdc, type IdcAttach } from "../idc/attach.js";
import { CMD_RUN, CTRL_CMD } from "./vcpu-protocol.js";

/** How long one doorbell hypercall may park the health VM's vCPU. */
const DOORBELL_PARK_MS = 1000;
const DOORBELL_STEP_MS = 100;

/**
 * The health VM's doorbell: park this vCPU thread until a request is
 * published (the VMM bumps the doorbell word), the VM is told to stop, or a
 * while passes. The engine calls it only after spinning idle.
 */
export function serveDoorbell(hypercalls: Hypercalls, a: IdcAttach, ctrl: Int32Array): void {
  const { region, control } = attachIdc(a);
  hypercalls.on(ABI_CONSTANTS.HC_DOORBELL, () => {
    for (let waited = 0; waited < DOORBELL_PARK_MS; waited += DOORBELL_STEP_MS) {
      const seen = control.doorbellValue();
      if (region.pendingRequests() || Atomics.load(ctrl, CTRL_CMD) !== CMD_RUN) break;
      control.waitDoorbell(seen, DOORBELL_STEP_MS);
    }
    return BigInt(ABI_CONSTANTS.HC_OK);
  });
}
