/*
 * The health-VM role (role=hm): the kernel checks the IDC region the VMM
 * mapped, makes it reachable from ring 3 and runs the health-management engine
 * (src/user/hm_engine.c) as its only task.
 */
#ifndef GV_HM_H
#define GV_HM_H
#include "gv_abi.h"

/* Exit codes of the health VM (besides 0x80 + vector for an engine fault). */
#define EXIT_HM_BAD_IDC 0xE4     /* the IDC region is missing or malformed */
#define EXIT_HM_ENGINE_EXIT 0xE3 /* the engine returned: it found bad data */

/* Never returns normally: the engine runs until the VM is stopped. */
int hm_main(const struct gv_boot_info *bi);

#endif /* GV_HM_H */
