/** Parsing a bzImage: the setup header per the x86 boot protocol, checked as hostile input. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { GuardvisorError } from "../../src/errors.js";
import { HDR, parseBzImage, payloadFormat, protocolString } from "../../src/linux/bzimage.js";
import { fakeBzImage } from "./linux-fixtures.js";

function rejects(bytes: Uint8Array, pattern: RegExp): void {
  assert.throws(
    () => parseBzImage(bytes, "vmlinuz"),
    (e: unknown) => e instanceof GuardvisorError && e.code === "LINUX_IMAGE_INVALID" && pattern.test(e.message),
  );
}

describe("bzImage parsing", () => {
  it("reads the header fields of a 2.15 64-bit relocatable image", () => {
    const kernel = new Uint8Array(8192).fill(0x90);
    kernel.set([0x1f, 0x8b, 0x08], 0x100);
    const img = parseBzImage(fakeBzImage({ kernel, setupSects: 39, payload: { offset: 0x100, length: 0x1000 } }));
    assert.equal(img.protocol, 0x020f);
    assert.equal(protocolString(img), "2.15");
    assert.equal(img.setupSects, 39);
    assert.equal(img.setup.length, 40 * 512);
    assert.equal(img.kernel.length, 8192);
    assert.equal(img.kernel[0x100], 0x1f);
    assert.equal(img.relocatable, true);
    assert.equal(img.kernelAlignment, 0x200000);
    assert.equal(img.prefAddress, 0x1000000n);
    assert.equal(img.initSize, 0x400000);
    assert.equal(img.cmdlineSize, 0x7ff);
    assert.equal(img.initrdAddrMax, 0x7fffffff);
    assert.deepEqual(img.payload, { offset: 0x100, length: 0x1000, format: "gzip" });
    // The header runs from 0x1f1 to 0x202 + the byte at 0x201.
    assert.equal(img.header.length, 0x202 + 0x6a - 0x1f1);
    assert.equal(img.header[HDR.VERSION - HDR.SETUP_SECTS], 0x0f);
  });

  it("takes setup_sects 0 as 4", () => {
    assert.equal(parseBzImage(fakeBzImage({ setupSects: 0 })).setupSects, 4);
  });

  it("names the payload's compression from its magic", () => {
    assert.equal(payloadFormat(Uint8Array.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])), "xz");
    assert.equal(payloadFormat(Uint8Array.from([0x28, 0xb5, 0x2f, 0xfd])), "zstd");
    assert.equal(payloadFormat(Uint8Array.from([0x7f, 0x45, 0x4c, 0x46])), "elf");
    assert.equal(payloadFormat(Uint8Array.from([1, 2])), "unknown");
  });

  it("rejects what is not a bzImage, saying what it is", () => {
    rejects(new Uint8Array(100), /too short/);
    rejects(new Uint8Array(4096), /no "HdrS" magic/);
    const elf = new Uint8Array(4096);
    elf.set([0x7f, 0x45, 0x4c, 0x46]);
    rejects(elf, /ELF file .*not a bzImage/);
    const noFlag = fakeBzImage();
    noFlag[HDR.BOOT_FLAG] = 0;
    rejects(noFlag, /boot flag/);
  });

  it("rejects protocols older than 2.12, zImages and 32-bit kernels", () => {
    rejects(fakeBzImage({ version: 0x020b }), /boot protocol 2\.11; .*2\.12 or newer/);
    rejects(fakeBzImage({ loadflags: 0 }), /zImage/);
    rejects(fakeBzImage({ xloadflags: 0x02 }), /not a 64-bit kernel/);
  });

  it("bounds-checks every size and offset", () => {
    rejects(fakeBzImage({ jump: 0x10 }), /setup header ends at 0x212/);
    rejects(fakeBzImage({ jump: 0xff }), /setup header ends at 0x301/);
    rejects(fakeBzImage({ kernelAlignment: 0 }), /not a power of two/);
    rejects(fakeBzImage({ kernelAlignment: 0x300000 }), /not a power of two/);
    rejects(fakeBzImage({ initSize: 0 }), /init_size 0x0 is out of range/);
    rejects(fakeBzImage({ initSize: 0x100 }), /smaller than the 4096-byte protected-mode kernel/);
    rejects(fakeBzImage({ payload: { offset: 0xff0, length: 0x20 } }), /payload .* outside/);
    rejects(fakeBzImage({ payload: { offset: 0xffffffff, length: 0xffffffff } }), /payload .* outside/);
    rejects(fakeBzImage({ cmdlineSize: 0 }), /cmdline_size is 0/);
    rejects(fakeBzImage({ initrdAddrMax: 0x1000 }), /initrd_addr_max/);
    // Setup sectors running past the end of the file.
    const img = fakeBzImage();
    rejects(img.subarray(0, 5 * 512), /truncated/);
    const many = fakeBzImage();
    many[HDR.SETUP_SECTS] = 200;
    rejects(many, /truncated/);
    // A header cut off in the middle.
    rejects(img.subarray(0, 0x240), /truncated/);
  });

  it("never throws anything but LINUX_IMAGE_INVALID on random corruption", () => {
    const base = fakeBzImage();
    let seed = 12345;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    for (let i = 0; i < 2000; i++) {
      const img = base.slice(0, rnd() % 2 === 0 ? base.length : rnd() % base.length);
      for (let k = 0; k < 4; k++) img[0x1f0 + (rnd() % 0x80)] = rnd() & 0xff;
      try {
        parseBzImage(img);
      } catch (e) {
        assert.ok(e instanceof GuardvisorError && e.code === "LINUX_IMAGE_INVALID", String(e));
      }
    }
  });
});
