/**
 * `guardvisor lab setup`: install what the lab needs from Debian's packages.
 * QEMU 10 comes from bookworm-backports on Debian 12 (the suite is added to
 * apt's sources when missing); newer Debian releases have it in main.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { GuardvisorError, isGuardvisorError } from "../errors.js";
import { findLabInputs, type LabInputs, MIN_QEMU_MAJOR, qemuVersion } from "./inputs.js";

export const LAB_PACKAGES = ["qemu-system-x86", "linux-image-amd64", "busybox-static"] as const;

const BACKPORTS_SOURCES = "/etc/apt/sources.list.d/guardvisor-lab-backports.sources";

function osCodename(): string | undefined {
  try {
    return /^VERSION_CODENAME=(\w+)/m.exec(readFileSync("/etc/os-release", "utf8"))?.[1];
  } catch {
    return undefined;
  }
}

function aptSourcesMention(suite: string): boolean {
  const files = ["/etc/apt/sources.list"];
  const d = "/etc/apt/sources.list.d";
  if (existsSync(d)) for (const f of readdirSync(d)) files.push(join(d, f));
  return files.some((f) => {
    try {
      return readFileSync(f, "utf8").includes(suite);
    } catch {
      return false;
    }
  });
}

function run(cmd: string, args: string[], say: (m: string) => void): void {
  say(`$ ${cmd} ${args.join(" ")}`);
  const r = spawnSync(cmd, args, {
    stdio: ["ignore", 2, 2],
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
  if (r.status !== 0) {
    throw new GuardvisorError("LAB_UNAVAILABLE", `lab setup: \`${cmd} ${args.join(" ")}\` failed (status ${r.status})`);
  }
}

function installedQemuOk(): boolean {
  try {
    return Number(qemuVersion("qemu-system-x86_64").split(".")[0]) >= MIN_QEMU_MAJOR;
  } catch {
    return false;
  }
}

/** True when everything the lab needs is installed. */
export function labReady(): boolean {
  try {
    findLabInputs();
    return true;
  } catch (e) {
    if (isGuardvisorError(e) && e.code === "LAB_UNAVAILABLE") return false;
    throw e;
  }
}

/** Install the lab's packages (as root) and return what the lab will use. */
export function labSetup(say: (m: string) => void): LabInputs {
  try {
    const found = findLabInputs();
    say("the lab's packages are installed");
    return found;
  } catch (e) {
    if (!isGuardvisorError(e) || e.code !== "LAB_UNAVAILABLE") throw e;
    say(`missing: ${e.message}`);
  }
  const codename = osCodename();
  const suite = codename === "bookworm" ? "bookworm-backports" : undefined;
  const apt = `apt-get install${suite ? ` -t ${suite}` : ""} ${LAB_PACKAGES.join(" ")}`;
  if (process.getuid?.() !== 0) {
    throw new GuardvisorError(
      "LAB_UNAVAILABLE",
      `lab setup needs root to install ${LAB_PACKAGES.join(", ")}: run \`sudo npx guardvisor lab setup\`, or \`${apt}\` yourself`,
    );
  }
  if (!existsSync("/usr/bin/apt-get")) {
    throw new GuardvisorError(
      "LAB_UNAVAILABLE",
      `lab setup installs Debian packages and this host has no apt-get: install QEMU ${MIN_QEMU_MAJOR}+ (qemu-system-x86_64), a kernel with kvm_amd, virtio and 9p modules, and a static busybox`,
    );
  }
  if (suite && !aptSourcesMention(suite)) {
    say(`adding the ${suite} suite to apt's sources (${BACKPORTS_SOURCES})`);
    writeFileSync(
      BACKPORTS_SOURCES,
      [
        "Types: deb",
        "URIs: http://deb.debian.org/debian",
        `Suites: ${suite}`,
        "Components: main",
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg",
        "",
      ].join("\n"),
    );
  }
  run("apt-get", ["update", "-q"], say);
  if (!installedQemuOk()) {
    run("apt-get", ["install", "-y", "-q", ...(suite ? ["-t", suite] : []), "qemu-system-x86"], say);
  }
  run("apt-get", ["install", "-y", "-q", "--no-install-recommends", "linux-image-amd64", "busybox-static"], say);
  return findLabInputs();
}
