/** The debug-exit port: the guest writes its exit code and the VM stops. */
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import type { DeviceAction, PortDevice } from "./bus.js";

export class DebugExit implements PortDevice {
  readonly name = "debug-exit";
  readonly firstPort = ABI_CONSTANTS.PORT_DEBUG_EXIT;
  readonly lastPort = ABI_CONSTANTS.PORT_DEBUG_EXIT;

  ioOut(_port: number, size: number, _count: number, data: Uint8Array): DeviceAction {
    let code = 0;
    for (let i = size - 1; i >= 0; i--) code = code * 256 + (data[i] ?? 0);
    return { kind: "exit", code };
  }

  ioIn(_port: number, _size: number, _count: number, data: Uint8Array): void {
    data.fill(0xff);
  }
}
