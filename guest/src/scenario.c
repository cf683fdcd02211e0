/* The scenario registry. */
#include "scenario.h"
#include <stddef.h>

unsigned gv_restart_count;

static const struct scenario scenarios[] = {
	{ "benign", scenario_benign, NULL },
	{ "text-patch", scenario_text_patch, NULL },
	{ "syscall-hook", scenario_syscall_hook, NULL },
	{ "user-fault", scenario_user_fault, NULL },
	{ "div-zero", scenario_div_zero, NULL },
	{ "lstar-hook", scenario_lstar_hook, NULL },
	{ "null-deref", scenario_null_deref, NULL },
	{ "driver-exploit", scenario_driver_exploit, NULL },
	{ "triple-fault", scenario_triple_fault, NULL },
	{ "alias-map", scenario_alias_map, NULL },
	{ "pt-remap", scenario_pt_remap, NULL },
	{ "allowlist-abuse", scenario_allowlist_abuse, NULL },
	{ "idt-hook", scenario_idt_hook, NULL },
	{ "idtr-swap", scenario_idtr_swap, NULL },
	{ "wp-bypass", scenario_wp_bypass, NULL },
	{ "hang", scenario_hang, NULL },
	{ "exception-storm", scenario_exception_storm, NULL },
	{ "legit-patch", scenario_legit_patch, NULL },
	{ "bench-write", scenario_bench_write, scenario_bench_write_setup },
	{ "bench-ud", scenario_bench_ud, NULL },
	{ "bench-benign", scenario_bench_benign, NULL },
	{ "store-rep-movsb", scenario_store_rep_movsb, NULL },
	{ "store-rep-stosq-df", scenario_store_rep_stosq_df, NULL },
	{ "store-lock-add", scenario_store_lock_add, NULL },
	{ "store-xchg", scenario_store_xchg, NULL },
	{ "store-bts", scenario_store_bts, NULL },
	{ "store-cmpxchg", scenario_store_cmpxchg, NULL },
	{ "store-movnti", scenario_store_movnti, NULL },
	{ "store-push", scenario_store_push, NULL },
	{ "store-call", scenario_store_call, NULL },
	{ "store-movdqu", scenario_store_movdqu, NULL },
	{ "store-movntdq", scenario_store_movntdq, NULL },
	{ "store-fxsave", scenario_store_fxsave, NULL },
	{ "store-xsave", scenario_store_xsave, NULL },
	{ "store-vmovdqu-ymm", scenario_store_vmovdqu_ymm, NULL },
	{ "store-cross-page", scenario_store_cross_page, NULL },
	{ "store-straddle", scenario_store_straddle, NULL },
};

static int str_eq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

const struct scenario *scenario_find(const char *name)
{
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
		if (str_eq(scenarios[i].name, name))
			return &scenarios[i];
	return NULL;
}
