/**
 * The port-I/O bus: each device claims a range of ports. Unknown ports read
 * as all-ones and ignore writes (and are counted).
 */

/** What a device asks of the vCPU loop after an access. */
export type DeviceAction = { kind: "continue" } | { kind: "exit"; code: number };

export const CONTINUE: DeviceAction = { kind: "continue" };

export interface PortDevice {
  readonly name: string;
  /** Inclusive port range. */
  readonly firstPort: number;
  readonly lastPort: number;
  /** `data` holds size*count bytes (count > 1 for string I/O). */
  ioOut(port: number, size: number, count: number, data: Uint8Array): DeviceAction;
  /** Fill `data` (size*count bytes). */
  ioIn(port: number, size: number, count: number, data: Uint8Array): void;
}

export class IoBus {
  private readonly devices: PortDevice[] = [];
  unhandledOut = 0;
  unhandledIn = 0;

  register(d: PortDevice): void {
    for (const o of this.devices) {
      if (d.firstPort <= o.lastPort && o.firstPort <= d.lastPort) {
        throw new Error(`device ${d.name} overlaps ${o.name} on the I/O bus`);
      }
    }
    this.devices.push(d);
  }

  find(port: number): PortDevice | undefined {
    for (const d of this.devices) if (port >= d.firstPort && port <= d.lastPort) return d;
    return undefined;
  }

  out(port: number, size: number, count: number, data: Uint8Array): DeviceAction {
    const d = this.find(port);
    if (!d) {
      this.unhandledOut++;
      return CONTINUE;
    }
    return d.ioOut(port, size, count, data);
  }

  in(port: number, size: number, count: number, data: Uint8Array): void {
    const d = this.find(port);
    if (!d) {
      this.unhandledIn++;
      data.fill(0xff);
      return;
    }
    d.ioIn(port, size, count, data);
  }
}
