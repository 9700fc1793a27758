/* A device of a tensor-parallel group from C, without Python: the worker entry
 * point of edgelut.h. tests/test_tensor_parallel_capi.py builds and runs it.
 *
 *   capi_worker MODEL URL RANK RANKS LIBZMQ [PUBLIC SECRET SERVER]
 *
 * Without keys it runs --insecure. Prints the status name and the error, and
 * exits with the status. */
#include <stdio.h>
#include <stdlib.h>

#include "edgelut.h"

int main(int argc, char** argv) {
  if (argc != 6 && argc != 9) {
    fprintf(stderr, "usage: %s MODEL URL RANK RANKS LIBZMQ [PUBLIC SECRET SERVER]\n", argv[0]);
    return 64;
  }
  edgelut_worker_params p;
  edgelut_worker_params_init(&p);
  p.rank = atoi(argv[3]);
  p.ranks = atoi(argv[4]);
  p.n_threads = 1;
  p.timeout_seconds = 3.0;
  p.join_seconds = 20.0;
  p.libzmq = argv[5];
  if (argc == 9) {
    p.public_key = argv[6];
    p.secret_key = argv[7];
    p.server_key = argv[8];
  } else {
    p.insecure = 1;
  }
  edgelut_status s = edgelut_worker_run(argv[1], argv[2], &p);
  fprintf(stderr, "%s: %s\n", edgelut_status_name(s), edgelut_last_error());
  return (int)s;
}
