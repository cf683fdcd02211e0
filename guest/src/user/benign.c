/*
 * Ring-3 tasks of the benign scenario: a few million instructions of real
 * work (native speed in ring 3), a line of output and a handful of syscalls
 * each. Every task exits with its result, which the kernel folds into the
 * scenario checksum.
 */
#include "user.h"

#define SIEVE_LIMIT (1u << 20)
#define CRC_BUF_SIZE 16384
#define CRC_ROUNDS 4
#define MAT_N 48

static uint8_t sieve_bits[SIEVE_LIMIT / 16]; /* bit i: 2i+1 is composite */
static uint8_t crc_buf[CRC_BUF_SIZE];
static uint32_t mat_a[MAT_N][MAT_N], mat_b[MAT_N][MAT_N], mat_c[MAT_N][MAT_N];

/* pid and uid from the kernel, the result, then exit with the result. */
__attribute__((noreturn)) static void report(const char *name, uint64_t result)
{
	struct uline l = { 0 };
	uint64_t pid = (uint64_t)u_getpid();
	uint64_t uid = (uint64_t)u_getuid();
	ul_str(&l, "benign: task=");
	ul_str(&l, name);
	ul_str(&l, " pid=");
	ul_dec(&l, pid);
	ul_str(&l, " uid=");
	ul_dec(&l, uid);
	ul_str(&l, " result=0x");
	ul_hex(&l, result);
	ul_write(&l);
	u_exit(result);
}

/* Number of primes below SIEVE_LIMIT (82025). */
void user_sieve_task(uint64_t arg)
{
	(void)arg;
	uint32_t count = 1; /* 2 */
	for (uint32_t i = 1; 2 * i + 1 < SIEVE_LIMIT; i++) {
		if (sieve_bits[i / 8] & (1u << (i % 8)))
			continue;
		count++;
		uint32_t p = 2 * i + 1;
		for (uint64_t m = (uint64_t)p * p; m < SIEVE_LIMIT; m += 2 * p)
			sieve_bits[m / 16] |= (uint8_t)(1u << ((m / 2) % 8));
	}
	report("sieve", count);
}

static uint32_t xorshift32(uint32_t *s)
{
	uint32_t x = *s;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *s = x;
}

/* CRC-32 (IEEE, bitwise) over CRC_ROUNDS buffers of pseudo-random bytes. */
void user_crc_task(uint64_t arg)
{
	(void)arg;
	uint32_t seed = 0x12345678, crc = 0xffffffff;
	for (int r = 0; r < CRC_ROUNDS; r++) {
		for (int i = 0; i < CRC_BUF_SIZE; i++)
			crc_buf[i] = (uint8_t)xorshift32(&seed);
		for (int i = 0; i < CRC_BUF_SIZE; i++) {
			crc ^= crc_buf[i];
			for (int b = 0; b < 8; b++)
				crc = (crc >> 1) ^ (0xedb88320u & -(crc & 1));
		}
	}
	report("crc", ~crc);
}

static void matmul(uint32_t (*c)[MAT_N], uint32_t (*a)[MAT_N], uint32_t (*b)[MAT_N])
{
	for (int i = 0; i < MAT_N; i++)
		for (int j = 0; j < MAT_N; j++) {
			uint32_t s = 0;
			for (int k = 0; k < MAT_N; k++)
				s += a[i][k] * b[k][j];
			c[i][j] = s;
		}
}

/* C = A*B, then B = C*A; result: a position-weighted sum of B. */
void user_matmul_task(uint64_t arg)
{
	(void)arg;
	uint32_t seed = 0x9e3779b9;
	for (int i = 0; i < MAT_N; i++)
		for (int j = 0; j < MAT_N; j++) {
			mat_a[i][j] = xorshift32(&seed) & 0xff;
			mat_b[i][j] = xorshift32(&seed) & 0xff;
		}
	matmul(mat_c, mat_a, mat_b);
	matmul(mat_b, mat_c, mat_a);
	uint32_t h = 0;
	for (int i = 0; i < MAT_N; i++)
		for (int j = 0; j < MAT_N; j++)
			h += mat_b[i][j] * (uint32_t)(i * MAT_N + j + 1);
	report("matmul", h);
}
