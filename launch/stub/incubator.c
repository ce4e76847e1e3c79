/*
 * The incubator stub: tl-agent's pre-exec step for every user command,
 * without a libc and without the Go runtime (launch/incubator.go tells the
 * protocol, launch/stub.go how it is run).
 *
 *   argv:  [tl-agent-incubator, path, argv[0] of the program, ...]
 *   fd 3:  a socket to the agent; fd 4: this file (a memfd), closed here.
 *
 * It blocks in read(3) until the agent, which has meanwhile written this
 * process's oom_score_adj and moved it into the workload cgroup, sends one
 * byte; then marks fd 3 close-on-exec and execve's path. A failed execve
 * is answered with its errno (4 bytes, little-endian) on fd 3 and exit 127
 * (ENOENT) or 126. EOF instead of the byte: exit 125.
 *
 * Raw syscalls only (amd64 and arm64): a static, position-dependent ELF
 * of a few hundred bytes. Built by launch/stub/build.sh; the blobs beside
 * this file are its output, checked by TestStubReproducible.
 */

#define EINTR 4
#define ENOENT 2
#define F_SETFD 2
#define F_GETFL 3
#define F_SETFL 4
#define FD_CLOEXEC 1
#define O_NONBLOCK 04000

#if defined(__x86_64__)
#define SYS_read 0
#define SYS_write 1
#define SYS_close 3
#define SYS_execve 59
#define SYS_fcntl 72
#define SYS_exit_group 231

static inline long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall"
			 : "=a"(r)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return r;
}

/* The kernel enters with argc at (%rsp), argv and envp above it. */
__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	xor %ebp, %ebp\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call incubate\n"
	"	hlt\n");

#elif defined(__aarch64__)
#define SYS_fcntl 25
#define SYS_close 57
#define SYS_read 63
#define SYS_write 64
#define SYS_exit_group 94
#define SYS_execve 221

static inline long sys3(long n, long a, long b, long c)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	__asm__ volatile("svc 0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2)
			 : "memory", "cc");
	return x0;
}

__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	mov x29, #0\n"
	"	mov x30, #0\n"
	"	mov x0, sp\n"
	"	bl incubate\n"
	"	brk #0\n");

#else
#error "the stub is built for amd64 and arm64 only (others use the Go incubator)"
#endif

static __attribute__((noreturn)) void leave(long code)
{
	for (;;)
		sys3(SYS_exit_group, code, 0, 0);
}

__attribute__((noreturn, used)) void incubate(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	char **envp = argv + argc + 1;
	unsigned char b[4];
	long n, fl, e;

	sys3(SYS_close, 4, 0, 0);
	if (argc < 2)
		leave(125);
	/* The agent's end is non-blocking; ours must not be. */
	fl = sys3(SYS_fcntl, 3, F_GETFL, 0);
	if (fl >= 0 && (fl & O_NONBLOCK))
		sys3(SYS_fcntl, 3, F_SETFL, fl & ~O_NONBLOCK);
	do
		n = sys3(SYS_read, 3, (long)b, 1);
	while (n == -EINTR);
	if (n != 1)
		leave(125); /* the agent went away or gave up on this start */
	sys3(SYS_fcntl, 3, F_SETFD, FD_CLOEXEC);
	e = -sys3(SYS_execve, (long)argv[1], (long)(argv + 2), (long)envp);
	b[0] = e, b[1] = e >> 8, b[2] = e >> 16, b[3] = e >> 24;
	sys3(SYS_write, 3, (long)b, 4);
	leave(e == ENOENT ? 127 : 126);
}
