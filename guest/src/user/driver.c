/* Ring-3 task of the driver-exploit scenario: one driver request, then exit 0. */
#include "user.h"

void user_driver_task(uint64_t op)
{
	u_driver(op, 0);
	u_exit(0);
}
