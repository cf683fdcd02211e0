/**
 * The health VM's shared control word: every vCPU thread (guests and the
 * health VM) and the main thread see it. It says whether the health VM is
 * up, which request (if any) killed it, and carries the doorbell counter.
 */

export const HM_CTRL_SLOTS = 8;
/** HM_STATE_*: is the health VM answering? */
export const HMC_STATE = 0;
/** Bumped by every restart. */
export const HMC_GENERATION = 1;
/** Bumped by the VMM for every published request; the parked health VM waits on it. */
export const HMC_DOORBELL = 2;
/**
 * The request the last health VM to die was evaluating: guest index (-1:
 * none) and seq (low and high 32 bits). Kept until the next death: a guest's
 * thread that never saw the health VM down still finds its request here.
 */
export const HMC_POISON_GUEST = 3;
export const HMC_POISON_SEQ = 4;
export const HMC_POISON_SEQ_HI = 5;

export const HM_UP = 1;
export const HM_DOWN = 2;
export const HM_BOOTING = 0;
/** Out of restarts: every decision is fail-safe from now on. */
export const HM_FAILED = 3;

export class HmControl {
  readonly words: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(HM_CTRL_SLOTS * 4)) {
    this.words = new Int32Array(buffer);
  }

  get state(): number {
    return Atomics.load(this.words, HMC_STATE);
  }

  get generation(): number {
    return Atomics.load(this.words, HMC_GENERATION);
  }

  /** Wake a parked health VM: a request is waiting. */
  ring(): void {
    Atomics.add(this.words, HMC_DOORBELL, 1);
    Atomics.notify(this.words, HMC_DOORBELL);
  }

  doorbellValue(): number {
    return Atomics.load(this.words, HMC_DOORBELL);
  }

  /** Park the calling thread until the doorbell rings or `timeoutMs` passes. */
  waitDoorbell(seen: number, timeoutMs: number): void {
    Atomics.wait(this.words, HMC_DOORBELL, seen, timeoutMs);
  }

  markUp(): void {
    Atomics.add(this.words, HMC_GENERATION, 1);
    this.setState(HM_UP);
  }

  /** The health VM is gone; `poison` is the request it died on, if any. */
  markDown(poison?: { guest: number; seq: bigint }): void {
    Atomics.store(this.words, HMC_POISON_GUEST, -1); // (no half-written poison is ever read as whole)
    const seq = poison ? BigInt.asUintN(64, poison.seq) : 0n;
    Atomics.store(this.words, HMC_POISON_SEQ, Number(seq & 0xffffffffn) | 0);
    Atomics.store(this.words, HMC_POISON_SEQ_HI, Number(seq >> 32n) | 0);
    Atomics.store(this.words, HMC_POISON_GUEST, poison ? poison.guest : -1);
    this.setState(HM_DOWN);
  }

  /** Did the last health VM to die, die on guest `guest`'s request `seq`? */
  isPoison(guest: number, seq: bigint): boolean {
    const s = BigInt.asUintN(64, seq);
    return (
      Atomics.load(this.words, HMC_POISON_GUEST) === guest &&
      Atomics.load(this.words, HMC_POISON_SEQ) === (Number(s & 0xffffffffn) | 0) &&
      Atomics.load(this.words, HMC_POISON_SEQ_HI) === (Number(s >> 32n) | 0)
    );
  }

  markFailed(): void {
    this.setState(HM_FAILED);
  }

  private setState(s: number): void {
    Atomics.store(this.words, HMC_STATE, s);
    Atomics.notify(this.words, HMC_STATE);
    this.ring(); // wake a parked health VM thread so it sees the change
  }

  /** Sleep until the state word changes from `seen` or `timeoutMs` passes. */
  waitState(seen: number, timeoutMs: number): void {
    Atomics.wait(this.words, HMC_STATE, seen, timeoutMs);
  }
}
