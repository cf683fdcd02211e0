/*
 * hm-host: the health-management engine (src/user/hm_engine.c, built with
 * GV_HM_HOSTED) as a host process serving an IDC region in a shared file.
 * Usage: hm-host FILE SIZE. The VMM's tests use it to exercise the IDC
 * protocol and core health management without a health VM; an engine crash
 * (ud2) kills the process with SIGILL, like a fault stops the VM.
 *
 * Exit codes: 2 bad usage, 0xE4 the region is malformed, 3 bad rule table.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>
#include "hm_idc.h"

#define EXIT_BAD_IDC 0xE4

void hm_hosted_idle(void)
{
	struct timespec ts = { 0, 20000 };
	nanosleep(&ts, NULL);
}

void hm_hosted_exit(int code)
{
	exit(code);
}

int main(int argc, char **argv)
{
	/*
	 * The idle sleep stands for the health VM's parked vCPU: it must end when
	 * asked, not up to the default 50 µs of timer slack later (that slack was
	 * most of a cold request's round trip).
	 */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	if (argc != 3) {
		fprintf(stderr, "usage: hm-host FILE SIZE\n");
		return 2;
	}
	uint64_t size = strtoull(argv[2], NULL, 0);
	int fd = open(argv[1], O_RDWR);
	if (fd < 0 || size == 0) {
		perror("hm-host: open");
		return 2;
	}
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		perror("hm-host: mmap");
		return 2;
	}
	if (hm_idc_check((uint64_t)p, size, &hm_args) < 0) {
		fprintf(stderr, "hm-host: malformed IDC region\n");
		return EXIT_BAD_IDC;
	}
	user_hm_engine_task(0);
}
