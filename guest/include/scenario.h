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
	/* Optional: runs before the seal, for page-table changes the scenario needs
	   (after the seal the VMM puts back entries that translate protected memory).
	   Negative: the scenario cannot run. */
	int (*setup)(void);
};

/* How many times the VMM has restarted this guest (boot command line `restart=N`). */
extern unsigned gv_restart_count;

/* NULL if no scenario has that name. */
const struct scenario *scenario_find(const char *name);

/* One per file in src/scenarios/. */
int scenario_benign(void);
int scenario_text_patch(void);
int scenario_syscall_hook(void);
int scenario_user_fault(void);
int scenario_div_zero(void);
int scenario_lstar_hook(void);
int scenario_null_deref(void);
int scenario_driver_exploit(void);
int scenario_triple_fault(void);
int scenario_alias_map(void);
int scenario_pt_remap(void);
int scenario_allowlist_abuse(void);
int scenario_idt_hook(void);
int scenario_idtr_swap(void);
int scenario_wp_bypass(void);
int scenario_hang(void);
int scenario_exception_storm(void);
int scenario_legit_patch(void);
int scenario_bench_write(void);
int scenario_bench_write_setup(void);
int scenario_bench_ud(void);
int scenario_bench_benign(void);
/* store_forms.c: one store form each against protected memory. */
int scenario_store_rep_movsb(void);
int scenario_store_rep_stosq_df(void);
int scenario_store_lock_add(void);
int scenario_store_xchg(void);
int scenario_store_bts(void);
int scenario_store_cmpxchg(void);
int scenario_store_movnti(void);
int scenario_store_push(void);
int scenario_store_call(void);
int scenario_store_movdqu(void);
int scenario_store_movntdq(void);
int scenario_store_fxsave(void);
int scenario_store_xsave(void);
int scenario_store_vmovdqu_ymm(void);
int scenario_store_cross_page(void);
int scenario_store_straddle(void);

#endif /* GV_SCENARIO_H */
