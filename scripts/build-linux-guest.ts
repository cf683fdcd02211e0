/**
 * Build the Linux test guest into build/linux/ (src/linux/test-guest.ts):
 * a busybox initramfs for the host's Debian kernel. Never committed.
 *
 * Usage: node dist/scripts/build-linux-guest.js   (or npm run build:linux-guest)
 */
import { buildLinuxTestGuest } from "../src/linux/test-guest.js";

const g = buildLinuxTestGuest();
process.stdout.write(`${g.built ? "built" : "up to date"}: ${g.initrd} (kernel ${g.kernel})\n`);
