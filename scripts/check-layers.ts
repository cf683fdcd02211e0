/**
 * The import-direction check (`npm run lint`): every import between the
 * folders of src/ goes down the layers below, never up, so the house has no
 * cycles and a newcomer can read it from the bottom. Files at the top of src/
 * count as folders of their own name.
 *
 * Usage: node dist/scripts/check-layers.js   (exit 1 and one line per back-edge)
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, normalize, relative, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** Bottom first. A module may import from its own folder and from folders in lower layers only. */
export const LAYERS: readonly (readonly string[])[] = [
  ["errors"],
  ["abi", "byte-slab", "log", "names", "time-scale"],
  ["kvm", "x86"],
  ["model"],
  ["elf", "idc", "devices"],
  ["decide"],
  ["policy", "vmm"],
  ["health"],
  ["audit", "scenarios", "metrics", "control", "lab"],
  ["linux"],
  ["run"],
  ["bench"],
  ["cli"],
];

export interface Edge {
  from: string;
  to: string;
  /** The importing file, for the message. */
  file: string;
}

/** The import edges between src/ folders, from the sources under `srcDir`. */
export function importEdges(srcDir: string): Edge[] {
  const edges: Edge[] = [];
  const folderOf = (path: string) => {
    const parts = relative(srcDir, path).split(sep);
    return parts.length > 1 ? (parts[0] as string) : (parts[0] as string).replace(/\.[jt]s$/, "");
  };
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith(".ts")) {
        const text = readFileSync(path, "utf8");
        for (const m of text.matchAll(/(?:import|export)[^;]*?from\s+"(\.[^"]+)"/g)) {
          const target = normalize(join(dirname(path), m[1] as string));
          const from = folderOf(path);
          const to = folderOf(target);
          if (from !== to) edges.push({ from, to, file: relative(srcDir, path) });
        }
      }
    }
  };
  walk(srcDir);
  return edges;
}

/** The edges that go up (or sideways between folders of one layer), or into a folder no layer names. */
export function layerViolations(edges: readonly Edge[], layers = LAYERS): string[] {
  const rank = new Map<string, number>();
  layers.forEach((names, i) => {
    for (const n of names) rank.set(n, i);
  });
  const out: string[] = [];
  for (const e of edges) {
    const a = rank.get(e.from);
    const b = rank.get(e.to);
    if (a === undefined) out.push(`${e.file}: src/${e.from} is in no layer (scripts/check-layers.ts)`);
    else if (b === undefined)
      out.push(`${e.file}: imports src/${e.to}, which is in no layer (scripts/check-layers.ts)`);
    else if (b >= a) out.push(`${e.file}: ${e.from} (layer ${a}) imports ${e.to} (layer ${b}): imports must go down`);
  }
  return [...new Set(out)];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
  const problems = layerViolations(importEdges(join(root, "src")));
  for (const p of problems) process.stderr.write(`check-layers: ${p}\n`);
  process.exit(problems.length > 0 ? 1 : 0);
}
