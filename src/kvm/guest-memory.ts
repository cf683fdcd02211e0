/**
 * Guest RAM as seen by the VMM: one host mapping shared by every thread,
 * addressed by guest-physical address. Every access is bounds-checked: the
 * addresses and lengths usually come from a possibly hostile guest.
 */
import { GuardvisorError } from "../errors.js";
import { native } from "./native.js";

/** What a worker thread needs to attach to the same guest RAM. */
export interface GuestMemoryHandle {
  readonly hostAddr: bigint;
  readonly size: number;
}

export const PAGE_SIZE = 4096;

export class GuestMemory {
  readonly hostAddr: bigint;
  readonly size: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  private owned: boolean;

  private constructor(hostAddr: bigint, size: number, owned: boolean, buffer: ArrayBuffer) {
    this.hostAddr = hostAddr;
    this.size = size;
    this.owned = owned;
    this.bytes = new Uint8Array(buffer);
    this.view = new DataView(buffer);
  }

  /** Map `size` bytes of zeroed RAM (page multiple). */
  static allocate(size: number): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new GuardvisorError("CONFIG_INVALID", `memory size ${size} is not a positive multiple of ${PAGE_SIZE}`);
    }
    const n = native();
    const addr = n.mmapAnonymous(size);
    return new GuestMemory(addr, size, true, n.arrayBufferAt(addr, size));
  }

  /** Map `size` bytes of an open file, shared (memory another process can map too). */
  static mapFile(fd: number, size: number): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new GuardvisorError("CONFIG_INVALID", `mapping size ${size} is not a positive multiple of ${PAGE_SIZE}`);
    }
    const n = native();
    const addr = n.mmapFd(fd, size);
    return new GuestMemory(addr, size, true, n.arrayBufferAt(addr, size));
  }

  /** Attach to RAM another thread allocated (no copy). */
  static attach(handle: GuestMemoryHandle): GuestMemory {
    return new GuestMemory(handle.hostAddr, handle.size, false, native().arrayBufferAt(handle.hostAddr, handle.size));
  }

  get handle(): GuestMemoryHandle {
    return { hostAddr: this.hostAddr, size: this.size };
  }

  /** Host address of a guest-physical address (for memory slots). */
  hostAddressOf(gpa: number): bigint {
    this.check(gpa, 0);
    return this.hostAddr + BigInt(gpa);
  }

  /** True when [gpa, gpa+len) lies inside guest RAM. */
  contains(gpa: number, len: number): boolean {
    return Number.isSafeInteger(gpa) && Number.isSafeInteger(len) && gpa >= 0 && len >= 0 && gpa <= this.size - len;
  }

  /** Throw GUEST_MEMORY_BOUNDS unless [gpa, gpa+len) lies inside guest RAM. */
  check(gpa: number, len: number): void {
    if (!this.contains(gpa, len)) {
      throw new GuardvisorError(
        "GUEST_MEMORY_BOUNDS",
        `guest access [0x${safeHex(gpa)}, +${len}) is outside guest RAM (0x${this.size.toString(16)} bytes)`,
      );
    }
  }

  /** A view (not a copy) of guest bytes. */
  slice(gpa: number, len: number): Uint8Array {
    this.check(gpa, len);
    return this.bytes.subarray(gpa, gpa + len);
  }

  /** A copy of guest bytes (safe to keep after the guest changes them). */
  read(gpa: number, len: number): Uint8Array {
    return this.slice(gpa, len).slice();
  }

  write(gpa: number, data: Uint8Array): void {
    this.check(gpa, data.length);
    this.bytes.set(data, gpa);
  }

  fill(gpa: number, len: number, value: number): void {
    this.check(gpa, len);
    this.bytes.fill(value, gpa, gpa + len);
  }

  readU8(gpa: number): number {
    this.check(gpa, 1);
    return this.view.getUint8(gpa);
  }
  readU16(gpa: number): number {
    this.check(gpa, 2);
    return this.view.getUint16(gpa, true);
  }
  readU32(gpa: number): number {
    this.check(gpa, 4);
    return this.view.getUint32(gpa, true);
  }
  readU64(gpa: number): bigint {
    this.check(gpa, 8);
    return this.view.getBigUint64(gpa, true);
  }
  writeU8(gpa: number, v: number): void {
    this.check(gpa, 1);
    this.view.setUint8(gpa, v);
  }
  writeU16(gpa: number, v: number): void {
    this.check(gpa, 2);
    this.view.setUint16(gpa, v, true);
  }
  writeU32(gpa: number, v: number): void {
    this.check(gpa, 4);
    this.view.setUint32(gpa, v, true);
  }
  writeU64(gpa: number, v: bigint): void {
    this.check(gpa, 8);
    this.view.setBigUint64(gpa, BigInt.asUintN(64, v), true);
  }

  /** Read a NUL-terminated string of at most `max` bytes. */
  readCString(gpa: number, max: number): string {
    const end = Math.min(this.size, gpa + max);
    this.check(gpa, 0);
    let i = gpa;
    while (i < end && this.bytes[i] !== 0) i++;
    return Buffer.from(this.bytes.subarray(gpa, i)).toString("latin1");
  }

  /** Unmap (owner only). Every view of this memory is invalid afterwards. */
  release(): void {
    if (!this.owned) return;
    this.owned = false;
    native().munmap(this.hostAddr, this.size);
  }
}

function safeHex(n: number): string {
  return Number.isFinite(n) ? Math.trunc(n).toString(16) : String(n);
}
