/**
 * Reading a kernel's kallsyms tables from its vmlinux: a synthetic image laid
 * out as scripts/kallsyms.c lays it out (absolute-percpu and plain
 * base-relative offsets, multi-character tokens, markers as u32), hostile
 * variants, and, where the host has one, Debian's own kernel.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { GuardvisorError } from "../../src/errors.js";
import { parseBzImage } from "../../src/linux/bzimage.js";
import { kallsymsFromVmlinux } from "../../src/linux/kallsyms.js";
import { decompressPayload } from "../../src/linux/vmlinux.js";
import { fakeKernelElf, START_KERNEL_MAP } from "./linux-fixtures.js";

interface Sym {
  address: bigint;
  type: string;
  name: string;
}

/** Multi-character tokens on codes no name uses (as kallsyms.c's compression does). */
const MULTI: Record<number, string> = { 1: "text_", 2: "poke", 3: "sys_", 4: "__", 5: "call_table" };

function tokenTable(): string[] {
  // Codes no name uses hold multi-character tokens; the others stand for themselves.
  return Array.from({ length: 256 }, (_, i) => MULTI[i] ?? (i > 0x20 && i < 0x7f ? String.fromCharCode(i) : `q${i}`));
}

/** Greedy encoding of "TYPE+name" with the table's tokens. */
function encodeName(full: string, tokens: string[]): number[] {
  const out: number[] = [];
  let i = 0;
  while (i < full.length) {
    const multi = Object.entries(MULTI).find(([, t]) => full.startsWith(t, i));
    if (multi) {
      out.push(Number(multi[0]));
      i += multi[1].length;
    } else {
      out.push(tokens.indexOf(full[i] as string));
      i++;
    }
  }
  return out;
}

const pad8 = (parts: number[]) => {
  while (parts.length % 8) parts.push(0);
};

/** .rodata bytes holding filler, then the kallsyms tables for `syms`. */
function kallsymsRodata(syms: Sym[], relBase: bigint, absolutePercpu: boolean, filler = 64): Uint8Array {
  const tokens = tokenTable();
  const b: number[] = [];
  // Some kernel pointers before the tables, as real .rodata has.
  for (let i = 0; i < filler; i++) b.push(...le64(relBase + BigInt(i * 16)));
  const off = (s: Sym) =>
    absolutePercpu
      ? s.type === "A"
        ? Number(s.address)
        : Number(relBase - 1n - s.address)
      : Number(s.address - relBase);
  for (const s of syms) b.push(...le32(off(s)));
  pad8(b);
  b.push(...le64(relBase));
  b.push(...le32(syms.length));
  pad8(b);
  const names = b.length;
  const markers: number[] = [];
  syms.forEach((s, i) => {
    if (i % 256 === 0) markers.push(b.length - names);
    const enc = encodeName(`${s.type}${s.name}`, tokens);
    b.push(enc.length, ...enc);
  });
  pad8(b);
  for (const m of markers) b.push(...le32(m));
  pad8(b);
  const offsets: number[] = [];
  const tableAt = b.length;
  for (const t of tokens) {
    offsets.push(b.length - tableAt);
    b.push(...Buffer.from(`${t}\0`, "latin1"));
  }
  pad8(b);
  for (const o of offsets) b.push(o & 0xff, o >> 8);
  b.push(...Buffer.from("other read-only data\0", "latin1"));
  return Uint8Array.from(b);
}

function le32(n: number): number[] {
  const x = Buffer.alloc(4);
  x.writeInt32LE(n | 0);
  return [...x];
}

function le64(n: bigint): number[] {
  const x = Buffer.alloc(8);
  x.writeBigUInt64LE(n);
  return [...x];
}

const TEXT = 0xffffffff81000000n;

/** 1,000 symbols: a few named, the rest filler, in address order; percpu ones first. */
function symbols(): Sym[] {
  const s: Sym[] = [
    { address: 0n, type: "A", name: "fixed_percpu_data" },
    { address: 0x1000n, type: "A", name: "cpu_debug_store" },
    { address: TEXT, type: "T", name: "_text" },
    { address: TEXT + 0x3b210n, type: "t", name: "__text_poke" },
    { address: TEXT + 0x3ca60n, type: "T", name: "text_poke" },
  ];
  for (let i = 0; i < 994; i++) s.push({ address: TEXT + 0x40000n + BigInt(i * 0x40), type: "t", name: `fn_${i}` });
  s.push({ address: TEXT + 0x1000360n, type: "D", name: "sys_call_table" });
  return s;
}

function image(rodata: Uint8Array): Uint8Array {
  const k = (p: number) => START_KERNEL_MAP + BigInt(p);
  return fakeKernelElf(
    [{ vaddr: k(0x1000000), paddr: 0x1000000, memsz: 0x1400000 }],
    [
      { name: ".text", addr: k(0x1000000), size: 0x1000000, flags: 0x6 },
      { name: ".rodata", addr: k(0x2000000), size: rodata.length, flags: 0x3, data: rodata },
    ],
  );
}

describe("kallsyms from a vmlinux", () => {
  for (const absolutePercpu of [true, false]) {
    it(`decodes every symbol (${absolutePercpu ? "absolute per-CPU" : "plain base-relative"} offsets)`, () => {
      const syms = absolutePercpu ? symbols() : symbols().filter((s) => s.type !== "A");
      const map = kallsymsFromVmlinux(image(kallsymsRodata(syms, TEXT, absolutePercpu)));
      assert.equal(map.symbols.length, syms.length);
      for (const want of syms) {
        const got = map.byName.get(want.name);
        assert.ok(got, want.name);
        assert.equal(got.address, want.address, want.name);
        assert.equal(got.type, want.type, want.name);
      }
      assert.deepEqual(
        map.symbols.map((s) => s.address),
        [...map.symbols.map((s) => s.address)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)),
      );
    });
  }

  it("refuses an image without kallsyms tables, naming it", () => {
    const ro = new Uint8Array(4096).fill(0x41);
    assert.throws(
      () => kallsymsFromVmlinux(image(ro), "vmlinuz-x"),
      (e: unknown) =>
        e instanceof GuardvisorError && e.code === "LINUX_IMAGE_INVALID" && /vmlinuz-x.*token table/.test(e.message),
    );
  });

  it("refuses tables whose names run past the token table or whose markers disagree", () => {
    const ro = kallsymsRodata(symbols(), TEXT, true);
    // Claim more symbols than there are names: decoding runs into the token table.
    const count = Buffer.from(ro.buffer, ro.byteOffset).indexOf(Buffer.from(le32(symbols().length)));
    const more = Uint8Array.from(ro);
    Buffer.from(more.buffer).writeUInt32LE(symbols().length + 300, count);
    assert.throws(() => kallsymsFromVmlinux(image(more)), /could not be decoded/);
    // A first name of length zero is no name.
    const names = count + 8;
    const zero = Uint8Array.from(ro);
    zero[names] = 0;
    assert.throws(() => kallsymsFromVmlinux(image(zero)), /could not be decoded/);
  });

  it("refuses a .rodata that lies past the file's end", () => {
    const bytes = image(kallsymsRodata(symbols(), TEXT, true));
    assert.throws(() => kallsymsFromVmlinux(bytes.subarray(0, bytes.length - 100)), /past the file's end/);
  });

  const kernel = existsSync("/boot")
    ? readdirSync("/boot")
        .filter((f) => f.startsWith("vmlinuz-"))
        .sort()
        .at(-1)
    : undefined;
  it("reads Debian's kernel: _text at the link address, text_poke in .text, sys_call_table in .rodata", {
    skip: kernel ? false : "no /boot/vmlinuz-* on this host",
  }, () => {
    const payload = decompressPayload(parseBzImage(readFileSync(`/boot/${kernel}`)));
    const map = kallsymsFromVmlinux(payload);
    assert.ok(map.symbols.length > 10_000, `${map.symbols.length} symbols`);
    const at = (n: string) => map.byName.get(n)?.address ?? -1n;
    assert.equal(at("_text"), TEXT);
    assert.ok(at("text_poke") > at("_text") && at("text_poke") < at("_etext"));
    assert.ok(at("sys_call_table") >= at("__start_rodata") && at("sys_call_table") < at("__end_rodata"));
  });
});
