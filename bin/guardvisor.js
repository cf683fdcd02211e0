#!/usr/bin/env node
import { timeScale } from "../dist/src/time-scale.js";

try {
  // Checked before the CLI loads: its default time limits are scaled by it.
  timeScale();
} catch (e) {
  process.stderr.write(`guardvisor: error: ${e.message}\n`);
  process.exit(2);
}
const { main } = await import("../dist/src/cli/main.js");
process.exitCode = await main(process.argv);
