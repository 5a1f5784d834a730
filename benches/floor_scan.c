/*
 * floor_scan_c PID_DIR: the floor of a status scan in C (gcc -O2), beside the Rust
 * floor (benches/src/bin/floor_scan.rs), for benches/compare.sh.
 *
 * The same system calls and nothing else: open the PID directory and read it
 * (readdir: getdents64); per `*.pid` entry, openat relative to the directory
 * (O_NOFOLLOW | O_NONBLOCK, so a symlink or FIFO can neither redirect nor block the
 * scan), one read, close, parse the PID, kill(pid, 0); per live PID, open, read and
 * close /proc/PID/stat, whose state (a zombie counts as dead) and start time (field 22)
 * are what an identity check compares. Prints one line of counts, as the Rust floor
 * does. What it saves over the Rust floor is Rust's process start (and nothing the
 * scan itself needs).
 *
 * Build: gcc -O2 -o floor_scan_c benches/floor_scan.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Optional ASCII whitespace around 1 to 10 decimal digits, value > 1; else -1. */
static long parse_pid(const char *s, size_t n) {
    size_t a = 0, b = n;
    while (a < b && (s[a] == ' ' || s[a] == '\n' || s[a] == '\t' || s[a] == '\r')) a++;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\n' || s[b - 1] == '\t' || s[b - 1] == '\r')) b--;
    if (a == b || b - a > 10) return -1;
    long v = 0;
    for (size_t i = a; i < b; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return (v > 1 && v <= 0x7fffffff) ? v : -1;
}

/* 1 when /proc/PID/stat shows a live process (not a zombie or dead); its start time
 * (field 22) is parsed too, as an identity check needs it. */
static int proc_stat_alive(long pid, unsigned long long *start) {
    char path[32], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *close_paren = strrchr(buf, ')');
    if (!close_paren || close_paren[1] != ' ') return 0;
    char state = close_paren[2];
    if (state == 'Z' || state == 'X' || state == 'x') return 0;
    /* fields after the command: state is field 3; start time is field 22 */
    char *p = close_paren + 2;
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p) p++;
    }
    *start = p ? strtoull(p, NULL, 10) : 0;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: floor_scan_c PID_DIR\n");
        return 2;
    }
    int dfd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        fprintf(stderr, "floor_scan_c: error: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    int files_fd = dup(dfd);
    DIR *dir = fdopendir(dfd);
    if (!dir || files_fd < 0) {
        fprintf(stderr, "floor_scan_c: error: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    unsigned long files = 0, alive = 0, dead = 0, corrupt = 0;
    unsigned long long start_sum = 0;
    struct dirent *e;
    char buf[65];
    while ((e = readdir(dir)) != NULL) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 4 || strcmp(e->d_name + len - 4, ".pid") != 0) continue;
        files++;
        int fd = openat(files_fd, e->d_name,
                        O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
            if (errno == ENOENT) dead++;
            else corrupt++;
            continue;
        }
        ssize_t n = read(fd, buf, sizeof buf);
        close(fd);
        long pid = n > 0 ? parse_pid(buf, (size_t)n) : -1;
        if (pid < 0) {
            corrupt++;
            continue;
        }
        if (kill((pid_t)pid, 0) != 0 && errno != EPERM) {
            dead++;
            continue;
        }
        unsigned long long start = 0;
        if (proc_stat_alive(pid, &start)) {
            alive++;
            start_sum += start;
        } else {
            dead++;
        }
    }
    closedir(dir);
    close(files_fd);
    printf("files %lu alive %lu dead %lu corrupt %lu cleared 0\n", files, alive, dead, corrupt);
    /* keeps the start-time parse from being optimized away */
    return start_sum == 1 ? 3 : 0;
}
