mod openai;

fn main() {}
