/**
 * Hot reload: the owner posts a newly compiled policy; a vCPU thread, between
 * two exits (it never blocks on a message port), takes it and hands it to its
 * decider. One SharedArrayBuffer: a version word, a length word, the payload.
 * A reader copies the payload and checks the version did not move meanwhile.
 */
import { GuardvisorError } from "../errors.js";
import type { CompiledPolicy } from "./policy.js";

const VERSION = 0;
const LENGTH = 1;
const HEADER = 8;
/** Rule table (a few KiB) plus names and reasons. */
export const MAILBOX_BYTES = 256 * 1024;

interface Wire {
  name: string;
  table: string;
  names: string[];
  reasons: string[];
}

export class PolicyMailbox {
  private readonly words: Int32Array;
  private readonly payload: Uint8Array;
  private seen: number;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(HEADER + MAILBOX_BYTES)) {
    this.words = new Int32Array(buffer, 0, 2);
    this.payload = new Uint8Array(buffer, HEADER);
    this.seen = Atomics.load(this.words, VERSION);
  }

  /** Owner side: publish a policy for the vCPU thread to take. */
  post(p: CompiledPolicy): void {
    const wire: Wire = {
      name: p.name,
      table: Buffer.from(p.table).toString("base64"),
      names: p.names,
      reasons: p.reasons,
    };
    const bytes = new TextEncoder().encode(JSON.stringify(wire));
    if (bytes.length > this.payload.length) {
      throw new GuardvisorError("CONFIG_INVALID", `policy: too large to reload (${bytes.length} bytes)`);
    }
    Atomics.add(this.words, VERSION, 1); // odd: being written
    this.payload.set(bytes);
    Atomics.store(this.words, LENGTH, bytes.length);
    Atomics.add(this.words, VERSION, 1);
  }

  /** vCPU side: the policy posted since the last take, if any (cheap when none). */
  take(): Pick<CompiledPolicy, "name" | "table" | "names" | "reasons"> | undefined {
    const v = Atomics.load(this.words, VERSION);
    if (v === this.seen || (v & 1) === 1) return undefined;
    const len = Atomics.load(this.words, LENGTH);
    const copy = this.payload.slice(0, Math.min(len, this.payload.length));
    if (Atomics.load(this.words, VERSION) !== v) return undefined; // rewritten meanwhile: next time
    this.seen = v;
    const wire = JSON.parse(new TextDecoder().decode(copy)) as Wire;
    return {
      name: wire.name,
      table: new Uint8Array(Buffer.from(wire.table, "base64")),
      names: wire.names,
      reasons: wire.reasons,
    };
  }
}
