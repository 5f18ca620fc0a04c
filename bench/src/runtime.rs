//! The runtime benchmark (issue 4): time from `micro run` of an already built service to its first successful
//! call, and `micro logs` on a 100 MB log (the tail must not read the whole file: at most 50 ms).

fn main() {
    println!("runtime: not measured yet");
}
