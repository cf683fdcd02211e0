/** How Guardvisor names the VMs it runs, in summaries, audit records, metrics and messages. */

/** The name of guest VM number `g` (0-based). */
export const guestName = (g: number): string => `guest${g}`;
