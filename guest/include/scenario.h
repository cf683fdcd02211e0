/*
 * Scenarios: what the kernel does after boot, chosen by `scenario=NAME` on the
 * command line. Each prints exactly one final line
 *   GV-RESULT scenario=NAME key=value ...
 * and returns the exit code for the debug-exit port (0: it ran to its end,
 * whether or not an attack in it succeeded).
 */
#ifndef GV_SCENARIO_H
#define GV_SCENARIO_H

struct scenario {
	const char *name;
	int (*run)(void);
};

/* NULL if no scenario has that name. */
const struct scenario *scenario_find(const char *name);

/* One per file in src/scenarios/. */
int scenario_benign(void);
int scenario_text_patch(void);
int scenario_syscall_hook(void);
int scenario_user_fault(void);

#endif /* GV_SCENARIO_H */
