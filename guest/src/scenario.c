/* The scenario registry. */
#include "scenario.h"
#include <stddef.h>

static const struct scenario scenarios[] = {
	{ "benign", scenario_benign },
	{ "text-patch", scenario_text_patch },
	{ "syscall-hook", scenario_syscall_hook },
	{ "user-fault", scenario_user_fault },
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
