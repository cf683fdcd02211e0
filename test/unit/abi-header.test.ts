import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { generateAbiHeader } from "../../scripts/gen-abi-header.js";
import { SHARED_STRUCTS } from "../../src/abi/guest-abi.js";

describe("generated C ABI header", () => {
  it("agrees with the TypeScript layouts, as compiled by gcc", () => {
    const dir = mkdtempSync(join(tmpdir(), "gv-abi-"));
    try {
      writeFileSync(join(dir, "gv_abi.h"), generateAbiHeader());
      const prints = SHARED_STRUCTS.flatMap((s) => [
        `printf("${s.cName} $size %zu\\n", sizeof(struct ${s.cName}));`,
        ...s.fields.map((f) => `printf("${s.cName} ${f.name} %zu\\n", offsetof(struct ${s.cName}, ${f.name}));`),
      ]);
      writeFileSync(
        join(dir, "t.c"),
        `#include <stdio.h>\n#include "gv_abi.h"\nint main(void){${prints.join("\n")}return 0;}\n`,
      );
      execFileSync("gcc", ["-std=gnu11", "-Wall", "-Werror", "-o", join(dir, "t"), join(dir, "t.c")]);
      const fromC = execFileSync(join(dir, "t"), { encoding: "utf8" }).trim().split("\n");
      const fromTs = SHARED_STRUCTS.flatMap((s) => [
        `${s.cName} $size ${s.size}`,
        ...s.fields.map((f) => `${s.cName} ${f.name} ${f.offset}`),
      ]);
      assert.deepEqual(fromC, fromTs);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("is usable from assembly (no C-only syntax outside the C guard)", () => {
    const dir = mkdtempSync(join(tmpdir(), "gv-abi-"));
    try {
      writeFileSync(join(dir, "gv_abi.h"), generateAbiHeader());
      writeFileSync(
        join(dir, "t.S"),
        '#include "gv_abi.h"\n  mov $GV_PORT_DEBUG_EXIT, %dx\n  mov $GV_HC_DOORBELL, %eax\n',
      );
      execFileSync("gcc", ["-c", "-o", join(dir, "t.o"), join(dir, "t.S")]);
      assert.ok(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
