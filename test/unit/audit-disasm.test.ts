import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { BAD_INSN, bitnessOf, disassemble, MAX_INSN_BYTES } from "../../src/audit/disasm.js";
import { parseElf, segmentBytes } from "../../src/elf/elf.js";
import { packageRoot } from "../../src/kvm/native.js";

const b = (hex: string) => Uint8Array.from(Buffer.from(hex.replace(/\s/g, ""), "hex"));

describe("audit: disassembly of the instruction at RIP", () => {
  it("decodes known instructions in Intel syntax with memory sizes", () => {
    assert.deepEqual(disassemble(b("48 89 10")), { bytes: "488910", text: "mov qword ptr [rax],rdx" });
    assert.deepEqual(disassemble(b("c7 07 90 90 90 90")), {
      bytes: "c70790909090",
      text: "mov dword ptr [rdi],0x90909090",
    });
    assert.equal(disassemble(b("0f 0b")).text, "ud2");
    assert.equal(disassemble(b("88 02")).text, "mov byte ptr [rdx],al");
    assert.equal(disassemble(b("f3 48 ab")).text, "rep stosq qword ptr [rdi]");
  });

  it("takes only the first instruction's bytes from a 16-byte capture", () => {
    const r = disassemble(b("48 89 10 c3 90 90 90 90 90 90 90 90 90 90 90 90"));
    assert.deepEqual(r, { bytes: "488910", text: "mov qword ptr [rax],rdx" });
  });

  it("resolves relative branches against RIP", () => {
    assert.equal(disassemble(b("e8 00 01 00 00"), 0x101000n).text, "call 0x101105");
    assert.equal(disassemble(b("eb fe"), 0xffffffff80001000n).text, "jmp 0xffffffff80001000");
  });

  it("turns invalid, truncated and empty input into (bad), never an exception", () => {
    for (const hex of ["", "48", "0f", "ff ff ff ff", "f0 90", `${"66".repeat(15)}90`, "c4", "62 f1"]) {
      const r = disassemble(b(hex));
      assert.equal(r.text, BAD_INSN, `bytes ${hex || "(none)"}`);
      assert.equal(r.bytes, hex.replace(/\s/g, ""));
    }
  });

  it("survives random garbage, bounded to 16 bytes", () => {
    for (let i = 0; i < 2000; i++) {
      const bytes = randomBytes(1 + (i % 40));
      const r = disassemble(bytes, BigInt(i) * 0x1000n);
      assert.equal(typeof r.text, "string");
      assert.ok(r.text.length > 0 && r.text.length < 200);
      assert.ok(r.bytes.length <= 2 * MAX_INSN_BYTES);
      assert.ok(bytes.toString("hex").startsWith(r.bytes));
    }
  });

  it("picks the decoder width from EFER.LMA and CR0.PE", () => {
    assert.equal(bitnessOf(0x80050033n, 0xd00n), 64);
    assert.equal(bitnessOf(0x11n, 0n), 32);
    assert.equal(bitnessOf(0n, 0n), 16);
    // 32-bit: 48 is `dec eax`.
    assert.equal(disassemble(b("48"), 0n, 32).text, "dec eax");
  });

  it("decodes gv-kernel's own text-patch attempts as the audit log will show them", () => {
    const img = parseElf(readFileSync(join(packageRoot(), "guest", "out", "gv-kernel.elf")));
    const sym = (name: string) => img.symbols.find((x) => x.name === name)!;
    const fn = sym("evil_module_text_patch");
    const target = sym("gv_check_credentials").value;
    const seg = img.loadSegments.find((x) => fn.value >= x.vaddr && fn.value < x.vaddr + x.filesz)!;
    const code = segmentBytes(img, seg);
    const texts: string[] = [];
    for (let ip = fn.value; ip < fn.value + fn.size; ) {
      const off = ip - seg.vaddr;
      const r = disassemble(code.subarray(off, off + 16), BigInt(ip));
      assert.notEqual(r.text, BAD_INSN);
      texts.push(r.text);
      ip += r.bytes.length / 2;
    }
    const hex = (a: number) => `0x${a.toString(16)}`;
    // The three writes of the scenario: 1, 8 and 4 bytes at the function.
    assert.ok(
      texts.some((t) => t === `mov byte ptr [${hex(target)}],0xb8`),
      texts.join("; "),
    );
    assert.ok(
      texts.some((t) => /^mov qword ptr \[(0x[0-9a-f]+)\],r[a-z0-9]+$/.test(t) && t.includes(hex(target))),
      texts.join("; "),
    );
    assert.ok(
      texts.some((t) => t === `mov dword ptr [${hex(target + 4)}],0x9090c301`),
      texts.join("; "),
    );
  });
});
