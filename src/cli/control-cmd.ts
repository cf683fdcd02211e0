/**
 * `guardvisor guests` and `guardvisor resume`: the operator's side of a
 * run's control socket (`run --control PATH`).
 */
import type { Command } from "commander";
import { type ControlReply, request } from "../control/socket.js";
import { GuardvisorError } from "../errors.js";

const EXIT_OK = 0;
const EXIT_REFUSED = 1;

function print(reply: ControlReply, json: boolean | undefined): number {
  if (json) process.stdout.write(`${JSON.stringify(reply)}\n`);
  else if (reply.ok) {
    for (const g of reply.guests) {
      process.stdout.write(`${g.name}  ${g.state}${g.detail ? `  ${g.detail}` : ""}\n`);
    }
  } else process.stderr.write(`guardvisor: ${reply.error}\n`);
  return reply.ok ? EXIT_OK : EXIT_REFUSED;
}

function socketOf(flags: { control?: string }): string {
  if (!flags.control) throw new GuardvisorError("CONFIG_INVALID", "--control: give the socket the run listens on");
  return flags.control;
}

export function registerControlCommands(program: Command, setExit: (code: number) => void): void {
  program
    .command("guests")
    .description("list a running run's guests and their state (running, paused by a verdict, stopped)")
    .requiredOption("--control <socket>", "the socket the run listens on (run --control)")
    .option("--json", "print the reply as JSON")
    .action(async (flags: { control?: string; json?: boolean }) => {
      setExit(print(await request(socketOf(flags), { op: "guests" }), flags.json));
    });
  program
    .command("resume")
    .description("let a guest that a pause verdict parked go on")
    .argument("<guest>", "the guest's name (guest0, guest1, ...)")
    .requiredOption("--control <socket>", "the socket the run listens on (run --control)")
    .option("--json", "print the reply as JSON")
    .action(async (guest: string, flags: { control?: string; json?: boolean }) => {
      if (!/^guest\d{1,3}$/.test(guest)) {
        throw new GuardvisorError("CONFIG_INVALID", `guest: ${guest}: give a name like guest0`);
      }
      setExit(print(await request(socketOf(flags), { op: "resume", guest }), flags.json));
    });
}
