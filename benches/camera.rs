//! Criterion: one frame of each simulated arm's camera (96×96 rgb8), as the sim node and the
//! recorder render it every control period (`Renderer`: the floor worked out once), and as
//! `Camera::render` draws it from nothing.

use criterion::{Criterion, criterion_group, criterion_main};
use skillgraft::sim::camera::Renderer;

fn camera(c: &mut Criterion) {
    for name in skillgraft::sim::ROBOTS {
        let robot = skillgraft::sim::robot(name).expect("a simulated robot");
        let task = skillgraft::sim::tasks(1, 1, robot.home)[0];
        let mut frame = vec![0; robot.camera.frame_len()];
        let renderer = Renderer::new(robot.camera.clone());
        c.bench_function(&format!("camera/{name}/renderer_96x96"), |b| {
            b.iter(|| renderer.render(&robot, &task.start, task.target, &mut frame).expect("one frame"))
        });
        c.bench_function(&format!("camera/{name}/camera_render_96x96"), |b| {
            b.iter(|| robot.camera.render(&robot, &task.start, task.target, &mut frame).expect("one frame"))
        });
    }
}

criterion_group!(benches, camera);
criterion_main!(benches);
