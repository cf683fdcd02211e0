/* Ring-3 task of the syscall-hook scenario: exit with whatever getuid says. */
#include "user.h"

void user_getuid_task(uint64_t arg)
{
	(void)arg;
	u_exit((uint64_t)u_getuid());
}
