/**
 * Diagnostics: JSON lines on stderr (pino). The level comes from
 * GUARDVISOR_LOG_LEVEL (trace, debug, info, warn, error, fatal, silent;
 * default warn, so normal CLI output is unchanged). The CLI's own output —
 * summaries, tables, error lines — never goes through here.
 */
import { type DestinationStream, type LevelWithSilent, type Logger, pino } from "pino";

export const LOG_LEVEL_ENV = "GUARDVISOR_LOG_LEVEL";
export const DEFAULT_LOG_LEVEL: LevelWithSilent = "warn";
const LEVELS: readonly string[] = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];

export type { Logger };

export interface LoggerOptions {
  /** Default: GUARDVISOR_LOG_LEVEL, else warn. */
  level?: string;
  /** Default: stderr, written synchronously (nothing lost at exit). */
  destination?: DestinationStream;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const wanted = (opts.level ?? process.env[LOG_LEVEL_ENV] ?? "").trim().toLowerCase();
  const known = LEVELS.includes(wanted);
  const logger = pino(
    {
      name: "guardvisor",
      level: known ? wanted : DEFAULT_LOG_LEVEL,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.destination ?? pino.destination({ fd: 2, sync: true }),
  );
  if (wanted !== "" && !known) {
    logger.warn({ value: wanted, levels: LEVELS }, `${LOG_LEVEL_ENV}: unknown level, using ${DEFAULT_LOG_LEVEL}`);
  }
  return logger;
}

/** The process-wide logger. */
export const log: Logger = createLogger();

/** A child logger whose lines carry `component`. */
export const logFor = (component: string): Logger => log.child({ component });
