/* A controller's loop around `diffagent serve`, in C: read the sensors, ask for the action, apply it,
 * at a fixed rate.
 *
 *     make -C serve/c && serve/c/build/example_control_loop [HOST [PORT [TICKS [HZ]]]]
 *
 * defaults 127.0.0.1 8870 500 100; the token, when the server has one, comes from DIFFAGENT_SERVE_TOKEN,
 * as the server's own does. The sensors and the plant here are stand-ins (a few sines, a print): put
 * your robot's in read_sensors and apply_action.
 *
 * What a tick does when the server does not answer: it keeps the last action (a robot must not wait)
 * and goes on; the client reconnects by itself on the next tick, so a restarted server costs a few
 * ticks. A per-request error (BAD_SHAPE, NON_FINITE, ...) is a bug in what the controller sends, and
 * stops the loop.
 */
#define _POSIX_C_SOURCE 200809L

#include "diffagent_client.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void read_sensors(float *obs, uint32_t obs_dim, long tick) {
    for (uint32_t i = 0; i < obs_dim; i++) obs[i] = (float)sin(0.05 * (double)tick + (double)i);
}

static void apply_action(const float *action, uint32_t act_dim, long tick, long print_every) {
    if (tick % print_every != 0) return;
    printf("tick %ld: action", tick);
    for (uint32_t i = 0; i < act_dim; i++) printf(" %+.4f", action[i]);
    printf("\n");
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void sleep_until(struct timespec *next, long period_ns) {
    next->tv_nsec += period_ns;
    while (next->tv_nsec >= 1000000000L) {
        next->tv_nsec -= 1000000000L;
        next->tv_sec++;
    }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, next, NULL);
}

int main(int argc, char **argv) {
    const char *host = argc > 1 ? argv[1] : "127.0.0.1";
    long port = argc > 2 ? strtol(argv[2], NULL, 10) : DFSV_DEFAULT_PORT;
    long ticks = argc > 3 ? strtol(argv[3], NULL, 10) : 500;
    double hz = argc > 4 ? strtod(argv[4], NULL) : 100.0;
    if (argc > 5 || port < 1 || port > 65535 || ticks < 1 || !(hz > 0)) {
        fprintf(stderr, "usage: %s [HOST [PORT [TICKS [HZ]]]]  (PORT 1-65535, TICKS >= 1, HZ > 0; the token comes "
                        "from DIFFAGENT_SERVE_TOKEN)\n", argv[0]);
        return 2;
    }
    long period_ns = (long)(1e9 / hz);
    /* One period is all a tick can wait; 20 ms at least, so that a first connect fits on a busy machine. */
    int timeout_ms = period_ns / 1000000L > 20 ? (int)(period_ns / 1000000L) : 20;
    dfsv_client *client = dfsv_client_new(host, (uint16_t)port, getenv("DIFFAGENT_SERVE_TOKEN"), timeout_ms);
    if (client == NULL) {
        fprintf(stderr, "error: out of memory\n");
        return 1;
    }

    dfsv_metadata meta;
    if (dfsv_metadata_get(client, &meta) != DFSV_OK) {
        fprintf(stderr, "error: %s\n", dfsv_last_error(client));
        dfsv_client_free(client);
        return 1;
    }
    printf("policy: obs_dim %u, act_dim %u, K = %u; %ld ticks at %g Hz\n", (unsigned)meta.obs_dim,
           (unsigned)meta.act_dim, (unsigned)meta.num_steps, ticks, hz);
    float *obs = calloc(meta.obs_dim, sizeof *obs), *action = calloc(meta.act_dim, sizeof *action);
    double *round_trips = calloc((size_t)ticks, sizeof *round_trips);
    if (obs == NULL || action == NULL || round_trips == NULL) {
        fprintf(stderr, "error: out of memory\n");
        return 1;
    }
    /* A graph that draws its own noise takes no deterministic flag: it gives a sampled action. */
    int deterministic = meta.noise_input;

    long answered = 0, missed = 0, print_every = ticks >= 10 ? ticks / 10 : 1;
    int stopped = 0;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (long tick = 0; tick < ticks && !stopped; tick++) {
        read_sensors(obs, meta.obs_dim, tick);
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        int status = dfsv_act(client, obs, 1, meta.obs_dim, NULL, 0, deterministic, action, meta.act_dim);
        clock_gettime(CLOCK_MONOTONIC, &end);
        if (status == DFSV_OK) {
            round_trips[answered++] = (double)(end.tv_sec - start.tv_sec) + 1e-9 * (double)(end.tv_nsec - start.tv_nsec);
        } else if (dfsv_status_ends_connection(status) && status != DFSV_UNAUTHORIZED) {
            missed++; /* hold the last action; the next tick reconnects */
            fprintf(stderr, "tick %ld: %s\n", tick, dfsv_last_error(client));
        } else {
            fprintf(stderr, "stopping at tick %ld: %s\n", tick, dfsv_last_error(client));
            stopped = 1;
        }
        apply_action(action, meta.act_dim, tick, print_every);
        sleep_until(&next, period_ns);
    }

    printf("%ld ticks: %ld answered, %ld missed", answered + missed, answered, missed);
    if (answered > 0) {
        qsort(round_trips, (size_t)answered, sizeof *round_trips, compare_doubles);
        printf("; round trip p50 %.0f us, p99 %.0f us", 1e6 * round_trips[answered / 2],
               1e6 * round_trips[(answered * 99) / 100]);
    }
    printf("\n");
    free(obs);
    free(action);
    free(round_trips);
    dfsv_client_free(client);
    return stopped ? 1 : 0;
}
