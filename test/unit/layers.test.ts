/** The import-direction check that `npm run lint` runs: imports between src/ folders only go down the layers. */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { importEdges, layerViolations } from "../../scripts/check-layers.js";
import { packageRoot } from "../../src/kvm/native.js";

describe("layers", () => {
  it("every import in src/ goes down the layers", () => {
    const edges = importEdges(join(packageRoot(), "src"));
    assert.ok(edges.length > 50, `${edges.length} edges found`);
    assert.deepEqual(layerViolations(edges), []);
  });

  it("reports a back-edge, a sideways edge and a folder no layer names", () => {
    const dir = mkdtempSync(join(tmpdir(), "gv-layers-"));
    try {
      const src = join(dir, "src");
      for (const d of ["vmm", "health", "policy", "newthing"]) mkdirSync(join(src, d), { recursive: true });
      writeFileSync(join(src, "vmm", "a.ts"), 'import { b } from "../health/b.js";\nexport const a = b;\n');
      writeFileSync(join(src, "health", "b.ts"), "export const b = 1;\n");
      writeFileSync(join(src, "policy", "c.ts"), 'import type { A } from "../vmm/a.js";\nexport type C = A;\n');
      writeFileSync(join(src, "newthing", "d.ts"), 'export { b } from "../health/b.js";\n');
      assert.deepEqual(layerViolations(importEdges(src)).sort(), [
        "newthing/d.ts: src/newthing is in no layer (scripts/check-layers.ts)",
        "policy/c.ts: policy (layer 6) imports vmm (layer 6): imports must go down",
        "vmm/a.ts: vmm (layer 6) imports health (layer 7): imports must go down",
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
