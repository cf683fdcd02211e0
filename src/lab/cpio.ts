/**
 * A "newc" cpio archive writer: the format the Linux kernel unpacks as an
 * initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
 * Only what an initramfs needs: directories, regular files, symlinks, and
 * character devices (/dev/console must exist before init runs).
 */

export type CpioEntry =
  | { kind: "dir"; path: string; mode?: number }
  | { kind: "file"; path: string; data: Uint8Array; mode?: number }
  | { kind: "symlink"; path: string; target: string }
  | { kind: "chardev"; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

const hex8 = (n: number) => n.toString(16).padStart(8, "0");
const pad4 = (n: number) => (4 - (n % 4)) % 4;

function header(ino: number, mode: number, size: number, nameLen: number, rdev: [number, number] = [0, 0]): string {
  // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
  return `070701${[ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], nameLen, 0].map(hex8).join("")}`;
}

/** The archive, entries in the order given (parents before children), with the trailer. */
export function cpioArchive(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  const push = (b: Buffer) => {
    parts.push(b);
    offset += b.length;
  };
  const record = (ino: number, mode: number, path: string, data: Uint8Array, rdev?: [number, number]) => {
    const name = Buffer.from(`${path}\0`, "utf8");
    push(Buffer.from(header(ino, mode, data.length, name.length, rdev), "ascii"));
    push(name);
    push(Buffer.alloc(pad4(offset)));
    push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    push(Buffer.alloc(pad4(offset)));
  };
  entries.forEach((e, i) => {
    const path = e.path.replace(/^\/+/, "");
    if (e.kind === "dir") record(i + 1, S_IFDIR | (e.mode ?? 0o755), path, new Uint8Array(0));
    else if (e.kind === "file") record(i + 1, S_IFREG | (e.mode ?? 0o644), path, e.data);
    else if (e.kind === "symlink") record(i + 1, S_IFLNK | 0o777, path, Buffer.from(e.target, "utf8"));
    else record(i + 1, S_IFCHR | (e.mode ?? 0o600), path, new Uint8Array(0), [e.major, e.minor]);
  });
  record(0, 0, "TRAILER!!!", new Uint8Array(0));
  return Buffer.concat(parts);
}
