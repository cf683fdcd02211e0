/* The scenario registry. */
#include "scenario.h"
#include <stddef.h>

unsigned gv_restart_count;

static const struct scenario scenarios[] = {
	{ "benign", scenario_benign },
	{ "text-patch", scenario_text_patch },
	{ "syscall-hook", scenario_syscall_hook },
	{ "user-fault", scenario_user_fault },
	{ "div-zero", scenario_div_zero },
	{ "lstar-hook", scenario_lstar_hook },
	{ "null-deref", scenario_null_deref },
	{ "triple-fault", scenario_triple_fault },
	{ "alias-map", scenario_alias_map },
	{ "pt-remap", scenario_pt_remap },
	{ "idt-hook", scenario_idt_hook },
	{ "idtr-swap", scenario_idtr_swap },
	{ "wp-bypass", scenario_wp_bypass },
	{ "hang", scenario_hang },
	{ "exception-storm", scenario_exception_storm },
	{ "legit-patch", scenario_legit_patch },
	{ "bench-write", scenario_bench_write },
	{ "bench-ud", scenario_bench_ud },
	{ "bench-benign", scenario_bench_benign },
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
