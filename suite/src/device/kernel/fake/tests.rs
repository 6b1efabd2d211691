use super::*;

/// The double refuses what container.c and group.c refuse, so a
/// backend that reorders the sequence fails its tests.
#[test]
fn the_double_enforces_the_kernel_order() {
    let lab = Lab::new();
    let sys = &lab.sys;
    let rw = OFlag::O_RDWR | OFlag::O_CLOEXEC;
    let container = sys.open(&lab.tree.paths.container(), rw).unwrap();
    assert_eq!(
        sys.ioctl_int(&container, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU),
        Err(Errno::EINVAL)
    );
    let group = sys.open(&lab.tree.paths.dev.join("vfio/12"), rw).unwrap();
    assert_eq!(
        sys.open(&lab.tree.paths.dev.join("vfio/12"), rw).err(),
        Some(Errno::EBUSY)
    );
    let mut name = format!("{BDF}\0").into_bytes();
    assert_eq!(
        sys.ioctl(&group, VFIO_GROUP_GET_DEVICE_FD, &mut name, Pointee::None),
        Err(Errno::EINVAL)
    );
    let mut fd = container.as_raw_fd().to_ne_bytes();
    sys.ioctl(&group, VFIO_GROUP_SET_CONTAINER, &mut fd, Pointee::None)
        .unwrap();
    assert_eq!(
        sys.ioctl(&group, VFIO_GROUP_SET_CONTAINER, &mut fd, Pointee::None),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        sys.ioctl(&group, VFIO_GROUP_GET_DEVICE_FD, &mut name, Pointee::None),
        Err(Errno::EINVAL),
        "no IOMMU set yet"
    );
    sys.ioctl_int(&container, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU)
        .unwrap();
    assert_eq!(
        sys.ioctl_int(&container, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU),
        Err(Errno::EINVAL)
    );
    let mut other = b"0000:00:00.0\0".to_vec();
    assert_eq!(
        sys.ioctl(&group, VFIO_GROUP_GET_DEVICE_FD, &mut other, Pointee::None),
        Err(Errno::ENODEV)
    );
    assert!(
        sys.ioctl(&group, VFIO_GROUP_GET_DEVICE_FD, &mut name, Pointee::None)
            .unwrap()
            >= 0
    );
    let mut status = [8, 0, 0, 0, 0, 0, 0, 0];
    sys.ioctl(&group, VFIO_GROUP_GET_STATUS, &mut status, Pointee::None)
        .unwrap();
    assert_eq!(
        get_u32(&status, 4),
        VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET
    );
}
