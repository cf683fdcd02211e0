/*
 * baseline: the floor every Guardvisor benchmark ratio is taken against.
 *
 * A minimal VMM on plain KVM ioctls. It boots a gv-kernel ELF exactly as
 * Guardvisor does (src/vmm/boot.ts, src/vmm/guest-vm.ts): PT_LOAD segments
 * at their physical addresses, read-only memory slots over the pages of every
 * protected region (src/elf/elf.ts protectedRegions, src/vmm/protection.ts
 * planMemorySlots), the same boot page tables, GDT, boot info and command
 * line, the supported CPUID and the same entry registers. Then it resumes
 * every exit at once: an MMIO write (a store to a protected page) is dropped,
 * COM1 output goes to stderr, port 0xf4 ends the run. Nothing is captured or
 * decided, so each protected write costs exactly one bare KVM exit.
 *
 * Usage: baseline [options] KERNEL.elf
 *   --cmdline TEXT   boot command line (default "scenario=bench-write role=guest")
 *   --mem MIB        guest RAM in MiB, even, 4..4096 (default 32)
 *   --break ADDR     hardware breakpoint at ADDR (the guest's exception entry):
 *                    on each hit, step over it and re-arm, as Guardvisor's
 *                    exception capture does (two exits per exception)
 *   --timeout SEC    stop the guest after SEC seconds (default 600)
 *   --kvm PATH       the KVM device (default /dev/kvm)
 *   --dry-run FILE   no KVM: write guest RAM as it is at the first instruction
 *                    into FILE and print the boot plan as JSON
 *
 * Output: one JSON object on stdout when the guest exits through port 0xf4,
 *   { "exits": n, "p50Us": .., "p99Us": .., "wallUs": .., "exitCode": c,
 *     "tscKhz": k, "totalExits": t }
 * where exits counts the exits Guardvisor would turn into events (MMIO writes,
 * breakpoint hits) and p50Us/p99Us are the KVM_RUN round trips (resume to the
 * next exit, clock_gettime) that ended in one. Guest serial output and errors
 * ("baseline: error: ...", one line) go to stderr.
 *
 * Exit codes: 0 the guest exited with code 0; 1 it exited with another code,
 * crashed, halted or timed out; 2 bad usage or kernel; 3 KVM is unavailable;
 * 70 a KVM ioctl failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench_hist.h"
#include "gv_abi.h"

#define EXIT_OK 0
#define EXIT_RUN_FAILED 1
#define EXIT_USAGE 2
#define EXIT_NO_KVM 3
#define EXIT_INTERNAL 70

#define MIB (1024ULL * 1024)
#define GIB (1024 * MIB)
#define PAGE 4096ULL
#define TWO_MIB (2 * MIB)
#define MAX_KERNEL_BYTES (256 * MIB)
#define MAX_REGIONS 64
#define MAX_SLOTS (2 * MAX_REGIONS + 1)

#define PTE_P 0x1ULL
#define PTE_RW 0x2ULL
#define PDE_PS 0x80ULL
#define CR0_BOOT 0x80050033ULL
#define CR4_BOOT 0x620ULL
#define EFER_BOOT 0xd01ULL
#define DR7_EXEC_DR0 0x401ULL
#define COM1_LSR (GV_PORT_COM1 + 5)
#define LSR_READY 0x60

/* ELF64 (only what is read here). */
#define ET_EXEC 2
#define EM_X86_64 62
#define PT_LOAD 1
#define PF_X 1
#define PF_W 2
#define SHT_NOBITS 8
#define SHF_WRITE 1
#define SHF_ALLOC 2
#define EHDR_SIZE 64
#define PHDR_SIZE 56
#define SHDR_SIZE 64
#define MAX_HEADERS 4096

static const uint64_t boot_gdt[3] = { 0, 0x00af9b000000ffffULL, 0x00cf93000000ffffULL };

struct region {
	char name[64];
	uint64_t start, end;
};

struct slot {
	uint64_t gpa, size;
	int readonly;
};

struct kernel {
	const uint8_t *data;
	size_t size;
	uint64_t entry;
	struct region regions[MAX_REGIONS];
	unsigned nregions;
};

struct options {
	const char *kernel;
	const char *cmdline;
	const char *kvm;
	const char *dry_run;
	uint64_t mem;
	uint64_t break_addr;
	int have_break;
	unsigned timeout;
};

__attribute__((noreturn, format(printf, 2, 3))) static void die(int code, const char *fmt, ...)
{
	va_list ap;
	fputs("baseline: error: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- ELF ------------------------------------------------------------------ */

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

/* [off, off+len) inside a file of `size` bytes, without overflow. */
static int in_file(uint64_t off, uint64_t len, size_t size)
{
	return off <= size && len <= size - off;
}

static uint8_t *read_file(const char *path, size_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(EXIT_USAGE, "cannot read kernel %s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		die(EXIT_USAGE, "cannot read kernel %s: not a regular file", path);
	if ((uint64_t)st.st_size > MAX_KERNEL_BYTES)
		die(EXIT_USAGE, "kernel %s is larger than 256 MiB", path);
	size_t n = (size_t)st.st_size;
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		die(EXIT_INTERNAL, "out of memory");
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r <= 0)
			die(EXIT_USAGE, "cannot read kernel %s: %s", path, r < 0 ? strerror(errno) : "short read");
		got += (size_t)r;
	}
	close(fd);
	*size = n;
	return buf;
}

struct phdr {
	uint32_t type, flags;
	uint64_t offset, vaddr, paddr, filesz, memsz;
};

static struct phdr phdr_at(const struct kernel *k, uint64_t phoff, unsigned i)
{
	const uint8_t *p = k->data + phoff + (uint64_t)i * PHDR_SIZE;
	struct phdr h = { rd32(p), rd32(p + 4), rd64(p + 8), rd64(p + 16), rd64(p + 24), rd64(p + 32), rd64(p + 40) };
	return h;
}

static void add_region(struct kernel *k, const char *name, uint64_t start, uint64_t end)
{
	if (k->nregions == MAX_REGIONS)
		die(EXIT_USAGE, "%s: more than %d protected regions", "kernel", MAX_REGIONS);
	struct region *r = &k->regions[k->nregions++];
	snprintf(r->name, sizeof(r->name), "%s", name);
	r->start = start;
	r->end = end;
}

/*
 * Parse and check the image (the subset of src/elf/elf.ts that a safe load
 * needs) and work out its protected regions the same way: every SHF_ALLOC
 * section without SHF_WRITE, non-empty and not SHT_NOBITS, at its physical
 * address; without allocated sections, every non-empty PT_LOAD without PF_W.
 */
static void parse_kernel(struct kernel *k, const char *path, uint64_t mem)
{
	const uint8_t *d = k->data;
	size_t size = k->size;
	if (size < 4 || memcmp(d, "\x7f" "ELF", 4) != 0)
		die(EXIT_USAGE, "%s: not an ELF file", path);
	if (size < EHDR_SIZE || d[4] != 2 || d[5] != 1 || d[6] != 1)
		die(EXIT_USAGE, "%s: not a little-endian ELF64 file", path);
	if (rd16(d + 16) != ET_EXEC || rd16(d + 18) != EM_X86_64)
		die(EXIT_USAGE, "%s: not an x86-64 executable (ET_EXEC, EM_X86_64)", path);
	k->entry = rd64(d + 24);
	uint64_t phoff = rd64(d + 32), shoff = rd64(d + 40);
	unsigned phentsize = rd16(d + 54), phnum = rd16(d + 56);
	unsigned shentsize = rd16(d + 58), shnum = rd16(d + 60), shstrndx = rd16(d + 62);
	if (phnum == 0 || phnum > MAX_HEADERS || phentsize != PHDR_SIZE ||
	    !in_file(phoff, (uint64_t)phnum * PHDR_SIZE, size))
		die(EXIT_USAGE, "%s: bad program header table", path);

	int entry_ok = 0;
	for (unsigned i = 0; i < phnum; i++) {
		struct phdr h = phdr_at(k, phoff, i);
		if (h.type != PT_LOAD || h.memsz == 0)
			continue;
		if (h.filesz > h.memsz || !in_file(h.offset, h.filesz, size))
			die(EXIT_USAGE, "%s: segment %u lies outside the file", path, i);
		if (h.paddr < GV_BOOT_AREA_END || h.paddr > mem || h.memsz > mem - h.paddr)
			die(EXIT_USAGE, "%s: segment %u [0x%llx,0x%llx) is not inside guest RAM above the boot area", path,
			    i, (unsigned long long)h.paddr, (unsigned long long)(h.paddr + h.memsz));
		if (k->entry >= h.vaddr && k->entry - h.vaddr < h.memsz && (h.flags & PF_X))
			entry_ok = 1;
	}
	if (!entry_ok)
		die(EXIT_USAGE, "%s: the entry point is not inside an executable PT_LOAD segment", path);

	int allocated = 0;
	if (shnum > 0) {
		if (shnum > MAX_HEADERS || shentsize != SHDR_SIZE || !in_file(shoff, (uint64_t)shnum * SHDR_SIZE, size) ||
		    shstrndx >= shnum)
			die(EXIT_USAGE, "%s: bad section header table", path);
		const uint8_t *strsh = d + shoff + (uint64_t)shstrndx * SHDR_SIZE;
		uint64_t stroff = rd64(strsh + 24), strsize = rd64(strsh + 32);
		if (!in_file(stroff, strsize, size))
			die(EXIT_USAGE, "%s: bad section name table", path);
		for (unsigned i = 0; i < shnum; i++) {
			const uint8_t *s = d + shoff + (uint64_t)i * SHDR_SIZE;
			uint32_t type = rd32(s + 4);
			uint64_t flags = rd64(s + 8), addr = rd64(s + 16), ssize = rd64(s + 32);
			if (!(flags & SHF_ALLOC))
				continue;
			allocated = 1;
			if ((flags & SHF_WRITE) || ssize == 0 || type == SHT_NOBITS)
				continue;
			char name[64];
			uint32_t nameoff = rd32(s);
			size_t n = 0;
			while (nameoff + n < strsize && n + 1 < sizeof(name) && d[stroff + nameoff + n])
				name[n] = (char)d[stroff + nameoff + n], n++;
			name[n] = '\0';
			if (n == 0)
				snprintf(name, sizeof(name), "section%u", i);
			int found = 0;
			for (unsigned j = 0; j < phnum && !found; j++) {
				struct phdr h = phdr_at(k, phoff, j);
				if (h.type == PT_LOAD && addr >= h.vaddr && addr - h.vaddr <= h.memsz &&
				    ssize <= h.memsz - (addr - h.vaddr)) {
					uint64_t start = h.paddr + (addr - h.vaddr);
					add_region(k, name, start, start + ssize);
					found = 1;
				}
			}
			if (!found)
				die(EXIT_USAGE, "%s: section %u (%s) is not inside any PT_LOAD segment", path, i, name);
		}
	}
	if (!allocated) {
		for (unsigned i = 0; i < phnum; i++) {
			struct phdr h = phdr_at(k, phoff, i);
			if (h.type == PT_LOAD && h.memsz > 0 && !(h.flags & PF_W)) {
				char name[32];
				snprintf(name, sizeof(name), "segment%u", i);
				add_region(k, name, h.paddr, h.paddr + h.memsz);
			}
		}
	}
	/* Sorted by start (then end), disjoint. */
	for (unsigned i = 1; i < k->nregions; i++)
		for (unsigned j = i; j > 0; j--) {
			struct region *a = &k->regions[j - 1], *b = &k->regions[j];
			if (a->start < b->start || (a->start == b->start && a->end <= b->end))
				break;
			struct region t = *a;
			*a = *b;
			*b = t;
		}
	for (unsigned i = 1; i < k->nregions; i++)
		if (k->regions[i].start < k->regions[i - 1].end)
			die(EXIT_USAGE, "%s: protected regions %s and %s overlap", path, k->regions[i - 1].name,
			    k->regions[i].name);
}

/* ---- guest memory, boot area, memory slots ------------------------------- */

static void wr64(uint8_t *ram, uint64_t gpa, uint64_t v)
{
	memcpy(ram + gpa, &v, sizeof(v));
}

static void load_segments(uint8_t *ram, const struct kernel *k)
{
	uint64_t phoff = rd64(k->data + 32);
	unsigned phnum = rd16(k->data + 56);
	for (unsigned i = 0; i < phnum; i++) {
		struct phdr h = phdr_at(k, phoff, i);
		if (h.type != PT_LOAD || h.memsz == 0)
			continue;
		memcpy(ram + h.paddr, k->data + h.offset, h.filesz);
		memset(ram + h.paddr + h.filesz, 0, h.memsz - h.filesz);
	}
}

/* writePageTables + writeBootArea (src/vmm/boot.ts), for a guest without an IDC region. */
static void write_boot_area(uint8_t *ram, uint64_t mem, const char *cmdline)
{
	uint64_t gib = (mem + GIB - 1) / GIB;
	memset(ram + GV_BOOT_PML4, 0, GV_BOOT_PT_LOW + 0x1000 - GV_BOOT_PML4);
	wr64(ram, GV_BOOT_PML4, GV_BOOT_PDPT | PTE_P | PTE_RW);
	for (uint64_t g = 0; g < gib; g++)
		wr64(ram, GV_BOOT_PDPT + 8 * g, (GV_BOOT_PD + 0x1000 * g) | PTE_P | PTE_RW);
	uint64_t pages2m = (mem + TWO_MIB - 1) / TWO_MIB;
	for (uint64_t i = 0; i < pages2m; i++)
		wr64(ram, GV_BOOT_PD + 8 * i,
		     i == 0 ? GV_BOOT_PT_LOW | PTE_P | PTE_RW : (i * TWO_MIB) | PTE_P | PTE_RW | PDE_PS);
	uint64_t low = (mem + PAGE - 1) / PAGE;
	if (low > 512)
		low = 512;
	for (uint64_t p = 1; p < low; p++)
		wr64(ram, GV_BOOT_PT_LOW + 8 * p, (p * PAGE) | PTE_P | PTE_RW);

	for (unsigned i = 0; i < 3; i++)
		wr64(ram, GV_BOOT_GDT + 8 * i, boot_gdt[i]);

	size_t len = strlen(cmdline);
	memset(ram + GV_BOOT_CMDLINE, 0, GV_BOOT_CMDLINE_MAX);
	memcpy(ram + GV_BOOT_CMDLINE, cmdline, len + 1);

	struct gv_boot_info bi;
	memset(&bi, 0, sizeof(bi));
	bi.magic = GV_BOOT_MAGIC;
	bi.version = GV_BOOT_VERSION;
	bi.mem_size = mem;
	bi.cmdline_gpa = GV_BOOT_CMDLINE;
	bi.cmdline_len = (uint32_t)len;
	bi.role = GV_ROLE_GUEST;
	bi.pml4_gpa = GV_BOOT_PML4;
	bi.pt_low_gpa = GV_BOOT_PT_LOW;
	bi.vm_id = 0;
	memcpy(ram + GV_BOOT_INFO, &bi, sizeof(bi));
}

/* planMemorySlots (src/vmm/protection.ts): read-only over every page holding a protected byte. */
static unsigned plan_slots(const struct kernel *k, uint64_t mem, struct slot *slots)
{
	uint64_t ro[MAX_REGIONS][2];
	unsigned nro = 0, n = 0;
	for (unsigned i = 0; i < k->nregions; i++) {
		uint64_t s = k->regions[i].start / PAGE * PAGE;
		uint64_t e = (k->regions[i].end + PAGE - 1) / PAGE * PAGE;
		if (nro > 0 && s <= ro[nro - 1][1]) {
			if (e > ro[nro - 1][1])
				ro[nro - 1][1] = e;
		} else {
			ro[nro][0] = s;
			ro[nro][1] = e;
			nro++;
		}
	}
	uint64_t at = 0;
	for (unsigned i = 0; i < nro; i++) {
		if (ro[i][0] > at)
			slots[n++] = (struct slot){ at, ro[i][0] - at, 0 };
		slots[n++] = (struct slot){ ro[i][0], ro[i][1] - ro[i][0], 1 };
		at = ro[i][1];
	}
	if (at < mem)
		slots[n++] = (struct slot){ at, mem - at, 0 };
	return n;
}

/* ---- vCPU state (bootSregs, bootRegs in src/vmm/boot.ts) ------------------ */

static struct kvm_segment flat_segment(uint16_t selector, int code)
{
	struct kvm_segment s;
	memset(&s, 0, sizeof(s));
	s.base = 0;
	s.limit = 0xffffffff;
	s.selector = selector;
	s.type = code ? 11 : 3;
	s.present = 1;
	s.dpl = 0;
	s.db = code ? 0 : 1;
	s.s = 1;
	s.l = code ? 1 : 0;
	s.g = 1;
	return s;
}

static void boot_sregs(struct kvm_sregs *s)
{
	struct kvm_segment data = flat_segment(GV_SEL_KERNEL_DATA, 0);
	s->cs = flat_segment(GV_SEL_KERNEL_CODE, 1);
	s->ds = s->es = s->fs = s->gs = s->ss = data;
	s->gdt.base = GV_BOOT_GDT;
	s->gdt.limit = 3 * 8 - 1;
	s->idt.base = 0;
	s->idt.limit = 0;
	s->cr0 = CR0_BOOT;
	s->cr3 = GV_BOOT_PML4;
	s->cr4 = CR4_BOOT;
	s->efer = EFER_BOOT;
}

static void boot_regs(struct kvm_regs *r, uint64_t entry)
{
	memset(r, 0, sizeof(*r));
	r->rip = entry;
	r->rdi = GV_BOOT_INFO;
	r->rsp = GV_BOOT_STACK_TOP;
	r->rflags = 2;
}

/* ---- dry run ---------------------------------------------------------------- */

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20 || c > 0x7e)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void json_segment(FILE *f, const char *name, const struct kvm_segment *s)
{
	fprintf(f,
		"\"%s\":{\"base\":%llu,\"limit\":%u,\"selector\":%u,\"type\":%u,\"present\":%u,\"dpl\":%u,\"db\":%u,"
		"\"s\":%u,\"l\":%u,\"g\":%u,\"avl\":%u,\"unusable\":%u}",
		name, (unsigned long long)s->base, s->limit, s->selector, s->type, s->present, s->dpl, s->db, s->s, s->l,
		s->g, s->avl, s->unusable);
}

static int dry_run(const struct options *o, const struct kernel *k, const uint8_t *ram, const struct slot *slots,
		   unsigned nslots)
{
	/* A sparse file: pages that are all zero are left as holes. */
	int fd = open(o->dry_run, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die(EXIT_USAGE, "cannot write %s: %s", o->dry_run, strerror(errno));
	static const uint8_t zero[PAGE];
	for (uint64_t at = 0; at < o->mem; at += PAGE) {
		if (memcmp(ram + at, zero, PAGE) == 0)
			continue;
		if (pwrite(fd, ram + at, PAGE, (off_t)at) != (ssize_t)PAGE)
			die(EXIT_USAGE, "cannot write %s: %s", o->dry_run, strerror(errno));
	}
	if (ftruncate(fd, (off_t)o->mem) != 0 || close(fd) != 0)
		die(EXIT_USAGE, "cannot write %s: %s", o->dry_run, strerror(errno));
	struct kvm_sregs s;
	struct kvm_regs r;
	memset(&s, 0, sizeof(s));
	boot_sregs(&s);
	boot_regs(&r, k->entry);
	FILE *out = stdout;
	fprintf(out, "{\"entry\":%llu,\"memSize\":%llu,\"regions\":[", (unsigned long long)k->entry,
		(unsigned long long)o->mem);
	for (unsigned i = 0; i < k->nregions; i++) {
		fprintf(out, "%s{\"name\":", i ? "," : "");
		json_string(out, k->regions[i].name);
		fprintf(out, ",\"start\":%llu,\"end\":%llu}", (unsigned long long)k->regions[i].start,
			(unsigned long long)k->regions[i].end);
	}
	fputs("],\"slots\":[", out);
	for (unsigned i = 0; i < nslots; i++)
		fprintf(out, "%s{\"gpa\":%llu,\"size\":%llu,\"readonly\":%s}", i ? "," : "",
			(unsigned long long)slots[i].gpa, (unsigned long long)slots[i].size,
			slots[i].readonly ? "true" : "false");
	fprintf(out, "],\"regs\":{\"rip\":%llu,\"rsp\":%llu,\"rdi\":%llu,\"rflags\":%llu},\"sregs\":{",
		(unsigned long long)r.rip, (unsigned long long)r.rsp, (unsigned long long)r.rdi,
		(unsigned long long)r.rflags);
	json_segment(out, "cs", &s.cs);
	fputc(',', out);
	json_segment(out, "ds", &s.ds);
	fprintf(out,
		",\"gdtBase\":%llu,\"gdtLimit\":%u,\"idtBase\":%llu,\"idtLimit\":%u,\"cr0\":%llu,\"cr3\":%llu,"
		"\"cr4\":%llu,\"efer\":%llu}}\n",
		(unsigned long long)s.gdt.base, s.gdt.limit, (unsigned long long)s.idt.base, s.idt.limit,
		(unsigned long long)s.cr0, (unsigned long long)s.cr3, (unsigned long long)s.cr4,
		(unsigned long long)s.efer);
	return EXIT_OK;
}

/* ---- KVM ---------------------------------------------------------------------- */

static volatile sig_atomic_t timed_out;
static struct kvm_run *volatile run_page;

static void on_alarm(int sig)
{
	(void)sig;
	timed_out = 1;
	if (run_page)
		run_page->immediate_exit = 1;
}

static int xioctl(int fd, unsigned long req, void *arg, const char *what)
{
	int rc = ioctl(fd, req, arg);
	if (rc < 0)
		die(EXIT_INTERNAL, "%s: %s", what, strerror(errno));
	return rc;
}

static int open_kvm(const char *path, int need_debug)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			die(EXIT_NO_KVM, "KVM is unavailable: %s does not exist", path);
		die(EXIT_NO_KVM, "KVM is unavailable: cannot open %s: %s", path, strerror(errno));
	}
	int version = ioctl(fd, KVM_GET_API_VERSION, 0);
	if (version != KVM_API_VERSION)
		die(EXIT_NO_KVM, "KVM is unavailable: %s: API version %d, expected %d", path, version, KVM_API_VERSION);
	if (ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) <= 0)
		die(EXIT_NO_KVM, "KVM is unavailable: %s lacks KVM_CAP_READONLY_MEM", path);
	if (need_debug && ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_SET_GUEST_DEBUG) <= 0)
		die(EXIT_NO_KVM, "KVM is unavailable: %s lacks KVM_CAP_SET_GUEST_DEBUG", path);
	return fd;
}

static void set_debug(int vcpu, uint64_t addr, int singlestep)
{
	struct kvm_guest_debug dbg;
	memset(&dbg, 0, sizeof(dbg));
	if (singlestep) {
		dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
	} else {
		dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
		dbg.arch.debugreg[0] = addr;
		dbg.arch.debugreg[7] = DR7_EXEC_DR0;
	}
	xioctl(vcpu, KVM_SET_GUEST_DEBUG, &dbg, "KVM_SET_GUEST_DEBUG");
}

/* The guest TSC rate: KVM_GET_TSC_KHZ, else the host TSC against CLOCK_MONOTONIC. */
static unsigned long tsc_khz(int vcpu)
{
	int khz = ioctl(vcpu, KVM_GET_TSC_KHZ, 0);
	if (khz > 0)
		return (unsigned long)khz;
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	uint64_t c0 = (uint64_t)hi << 32 | lo, t0 = now_ns();
	while (now_ns() - t0 < 20000000ULL)
		;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	uint64_t c1 = (uint64_t)hi << 32 | lo, t1 = now_ns();
	return (unsigned long)((c1 - c0) * 1000000ULL / (t1 - t0));
}

struct serial_line {
	char buf[512];
	size_t len;
};

static void serial_put(struct serial_line *l, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n' || l->len == sizeof(l->buf)) {
			fwrite(l->buf, 1, l->len, stderr);
			fputc('\n', stderr);
			l->len = 0;
			if (p[i] == '\n')
				continue;
		}
		l->buf[l->len++] = (char)p[i];
	}
}

static int run_guest(const struct options *o, const struct kernel *k, uint8_t *ram, const struct slot *slots,
		     unsigned nslots)
{
	int kvm = open_kvm(o->kvm, o->have_break);
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die(EXIT_INTERNAL, "KVM_CREATE_VM: %s", strerror(errno));
	for (unsigned i = 0; i < nslots; i++) {
		struct kvm_userspace_memory_region r = {
			.slot = i,
			.flags = slots[i].readonly ? KVM_MEM_READONLY : 0,
			.guest_phys_addr = slots[i].gpa,
			.memory_size = slots[i].size,
			.userspace_addr = (uint64_t)(uintptr_t)(ram + slots[i].gpa),
		};
		xioctl(vm, KVM_SET_USER_MEMORY_REGION, &r, "KVM_SET_USER_MEMORY_REGION");
	}
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die(EXIT_INTERNAL, "KVM_CREATE_VCPU: %s", strerror(errno));
	int mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size <= 0)
		die(EXIT_INTERNAL, "KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	struct kvm_run *run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die(EXIT_INTERNAL, "mmap kvm_run: %s", strerror(errno));

	const unsigned max_cpuid = 256;
	struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + max_cpuid * sizeof(struct kvm_cpuid_entry2));
	if (!cpuid)
		die(EXIT_INTERNAL, "out of memory");
	cpuid->nent = max_cpuid;
	xioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID");
	xioctl(vcpu, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
	free(cpuid);

	struct kvm_sregs sregs;
	xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
	boot_sregs(&sregs);
	xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
	struct kvm_regs regs;
	boot_regs(&regs, k->entry);
	xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
	if (o->have_break)
		set_debug(vcpu, o->break_addr, 0);
	unsigned long khz = tsc_khz(vcpu);

	run_page = run;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL); /* no SA_RESTART: KVM_RUN returns EINTR */
	alarm(o->timeout);

	static struct bench_hist hist;
	static struct serial_line line;
	uint64_t total = 0;
	int stepping = 0;
	const char *failure = NULL;
	char why[128];
	long exit_code = -1;
	uint64_t start = now_ns();
	while (exit_code < 0 && !failure) {
		uint64_t t0 = now_ns();
		int rc = ioctl(vcpu, KVM_RUN, 0);
		uint64_t t1 = now_ns();
		if (rc < 0) {
			if (errno != EINTR && errno != EAGAIN)
				die(EXIT_INTERNAL, "KVM_RUN: %s", strerror(errno));
			if (timed_out) {
				snprintf(why, sizeof(why), "stopped after the %u s time limit", o->timeout);
				failure = why;
			}
			continue;
		}
		total++;
		switch (run->exit_reason) {
		case KVM_EXIT_MMIO:
			if (run->mmio.is_write)
				bh_add(&hist, t1 - t0); /* a protected (or unbacked) write: dropped */
			else
				memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
			break;
		case KVM_EXIT_IO: {
			uint8_t *data = (uint8_t *)run + run->io.data_offset;
			size_t bytes = (size_t)run->io.size * run->io.count;
			uint16_t port = run->io.port;
			if (run->io.direction == KVM_EXIT_IO_IN) {
				memset(data, port == COM1_LSR ? LSR_READY : 0xff, bytes);
			} else if (port == GV_PORT_COM1) {
				serial_put(&line, data, bytes);
			} else if (port == GV_PORT_DEBUG_EXIT && run->io.size == 4) {
				exit_code = (long)rd32(data);
			} else if (port == GV_PORT_HYPERCALL) {
				xioctl(vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
				regs.rax = (regs.rax & 0xffffffff) == GV_HC_NOP ? GV_HC_OK : GV_HC_EINVAL;
				xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
			}
			break;
		}
		case KVM_EXIT_DEBUG:
			if (!o->have_break)
				break;
			if (stepping) {
				set_debug(vcpu, o->break_addr, 0);
				stepping = 0;
			} else if (run->debug.arch.pc == o->break_addr) {
				bh_add(&hist, t1 - t0);
				set_debug(vcpu, o->break_addr, 1);
				stepping = 1;
			}
			break;
		case KVM_EXIT_INTR:
			break;
		case KVM_EXIT_HLT:
			failure = "the guest halted the CPU";
			break;
		case KVM_EXIT_SHUTDOWN:
			failure = "triple fault (KVM_EXIT_SHUTDOWN)";
			break;
		case KVM_EXIT_FAIL_ENTRY:
			snprintf(why, sizeof(why), "VM entry failed, reason 0x%llx",
				 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			failure = why;
			break;
		case KVM_EXIT_INTERNAL_ERROR:
			snprintf(why, sizeof(why), "KVM internal error, suberror %u", run->internal.suberror);
			failure = why;
			break;
		default:
			snprintf(why, sizeof(why), "unhandled exit reason %u", run->exit_reason);
			failure = why;
			break;
		}
	}
	uint64_t wall = now_ns() - start;
	alarm(0);
	if (line.len)
		serial_put(&line, (const uint8_t *)"\n", 1);
	if (failure) {
		fprintf(stderr, "baseline: error: %s\n", failure);
		return EXIT_RUN_FAILED;
	}
	printf("{\"exits\":%llu,\"p50Us\":%.3f,\"p99Us\":%.3f,\"wallUs\":%.1f,\"exitCode\":%ld,\"tscKhz\":%lu,"
	       "\"totalExits\":%llu}\n",
	       (unsigned long long)hist.count, (double)bh_quantile(&hist, 500) / 1000.0,
	       (double)bh_quantile(&hist, 990) / 1000.0, (double)wall / 1000.0, exit_code, khz,
	       (unsigned long long)total);
	fflush(stdout);
	if (exit_code != 0) {
		fprintf(stderr, "baseline: error: the guest exited with code %ld\n", exit_code);
		return EXIT_RUN_FAILED;
	}
	return EXIT_OK;
}

/* ---- options -------------------------------------------------------------- */

static uint64_t number(const char *opt, const char *v)
{
	char *end;
	errno = 0;
	unsigned long long n = strtoull(v, &end, 0);
	if (!*v || *end || errno || *v == '-')
		die(EXIT_USAGE, "%s: '%s' is not a number", opt, v);
	return n;
}

static const char *value(int argc, char **argv, int *i)
{
	if (*i + 1 >= argc)
		die(EXIT_USAGE, "%s needs a value", argv[*i]);
	return argv[++*i];
}

static void parse_options(int argc, char **argv, struct options *o)
{
	o->cmdline = "scenario=bench-write role=guest";
	o->kvm = "/dev/kvm";
	o->mem = 32 * MIB;
	o->timeout = 600;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--cmdline")) {
			o->cmdline = value(argc, argv, &i);
		} else if (!strcmp(a, "--mem")) {
			uint64_t mib = number(a, value(argc, argv, &i));
			if (mib < 4 || mib > 4096 || mib % 2)
				die(EXIT_USAGE, "--mem: %llu MiB must be an even number from 4 to 4096",
				    (unsigned long long)mib);
			o->mem = mib * MIB;
		} else if (!strcmp(a, "--break")) {
			o->break_addr = number(a, value(argc, argv, &i));
			o->have_break = 1;
		} else if (!strcmp(a, "--timeout")) {
			uint64_t t = number(a, value(argc, argv, &i));
			if (t < 1 || t > 86400)
				die(EXIT_USAGE, "--timeout: must be 1 to 86400 seconds");
			o->timeout = (unsigned)t;
		} else if (!strcmp(a, "--kvm")) {
			o->kvm = value(argc, argv, &i);
		} else if (!strcmp(a, "--dry-run")) {
			o->dry_run = value(argc, argv, &i);
		} else if (a[0] == '-' && a[1]) {
			die(EXIT_USAGE, "unknown option %s (usage: baseline [--cmdline TEXT] [--mem MIB] [--break ADDR] "
					"[--timeout SEC] [--kvm PATH] [--dry-run FILE] KERNEL.elf)",
			    a);
		} else if (o->kernel) {
			die(EXIT_USAGE, "give one kernel, not '%s' and '%s'", o->kernel, a);
		} else {
			o->kernel = a;
		}
	}
	if (!o->kernel)
		die(EXIT_USAGE, "no kernel given (usage: baseline [options] KERNEL.elf)");
	size_t len = strlen(o->cmdline);
	if (len >= GV_BOOT_CMDLINE_MAX)
		die(EXIT_USAGE, "--cmdline: longer than %d bytes", GV_BOOT_CMDLINE_MAX - 1);
	for (size_t i = 0; i < len; i++)
		if (o->cmdline[i] < 0x20 || o->cmdline[i] > 0x7e)
			die(EXIT_USAGE, "--cmdline: only printable ASCII is allowed");
}

int main(int argc, char **argv)
{
	struct options o;
	memset(&o, 0, sizeof(o));
	parse_options(argc, argv, &o);
	struct kernel k;
	memset(&k, 0, sizeof(k));
	k.data = read_file(o.kernel, &k.size);
	parse_kernel(&k, o.kernel, o.mem);

	uint8_t *ram = mmap(NULL, o.mem, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		die(EXIT_INTERNAL, "cannot map %llu bytes of guest RAM: %s", (unsigned long long)o.mem, strerror(errno));
	load_segments(ram, &k);
	write_boot_area(ram, o.mem, o.cmdline);
	struct slot slots[MAX_SLOTS];
	unsigned nslots = plan_slots(&k, o.mem, slots);

	if (o.dry_run)
		return dry_run(&o, &k, ram, slots, nslots);
	return run_guest(&o, &k, ram, slots, nslots);
}
