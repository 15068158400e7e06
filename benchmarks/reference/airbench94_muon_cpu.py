# airbench94_muon (Keller Jordan, https://github.com/KellerJordan/cifar10-airbench,
# airbench94_muon.py at 096d14d), adapted to run on a CPU for a side-by-side measurement
# with fastcifar's `airbench94_muon` recipe. It is a reference, never a dependency of
# fastcifar: run it from a throwaway virtualenv with `pip install torch==2.13.0 numpy pillow`.
#
#   python benchmarks/reference/airbench94_muon_cpu.py --data cifar10-jpeg/ --epochs 2 --seeds 0,1,2
#
# What was changed, and only this (every change is marked "# CPU:" or "# DATA:" below):
#   1. device: the CPU instead of CUDA (no .cuda(), no torch.cuda.Event, no cudnn flag,
#      SGD without fused=True, a CUDA kernel).
#   2. no torch.compile (neither the Newton-Schulz function nor the model): its CPU backend
#      builds C++ at run time, which the original's GPU timing never paid for.
#   3. precision: torch.autocast("cpu", bfloat16) around the forward pass instead of a
#      half-precision net (CPUs have no fast float16; BatchNorm stays float32 as before).
#      Newton-Schulz runs in bfloat16 as in the original.
#   4. timing: time.perf_counter around the same spans the CUDA events covered (whitening,
#      each epoch's training, the final TTA evaluation); the untimed per-epoch evaluation
#      is kept, untimed. The original's warm-up run (random labels, before its 200 timed
#      runs, to compile) trains --warmup-steps steps only (default 3): nothing is compiled.
#   5. data: an image-folder tree (train/<class>/*.jpg, test/<class>/*.jpg, CIFAR-10 class
#      order) read with PIL instead of torchvision's download; the training set is shuffled
#      once with a fixed seed, because a folder lists images class by class and the original
#      fits its whitening on the first 5,000 training images of torchvision's (mixed) order.
#   6. the epoch budget (--epochs, default 8 as published) and the seeds (--seeds) are
#      arguments; each run prints one JSON line; torch.manual_seed(seed) before each run.
#   7. output: JSON lines per epoch and per run (and --json FILE with every run) instead of
#      print_training_details' table, and no logs/<uuid>/log.pt written at the end.
#   8. torchvision's T.Normalize is written out as `normalize` (the same arithmetic), so
#      the virtualenv needs no torchvision.
#
# Original licence:
# Copyright (c) 2024 Keller Jordan
#
# Permission is hereby granted, free of charge, to any person obtaining
# a copy of this software and associated documentation files (the
# "Software"), to deal in the Software without restriction, including
# without limitation the rights to use, copy, modify, merge, publish,
# distribute, sublicense, and/or sell copies of the Software, and to
# permit persons to whom the Software is furnished to do so, subject to
# the following conditions:
#
# The above copyright notice and this permission notice shall be
# included in all copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
# EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
# MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
# NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE
# LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION
# OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
# WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.

import argparse
import json
import os
import time  # CPU: wall clock instead of CUDA events
from math import ceil

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

AUTOCAST = dict(device_type='cpu', dtype=torch.bfloat16)  # CPU

#############################################
#               Muon optimizer              #
#############################################

def zeropower_via_newtonschulz5(G, steps=3, eps=1e-7):  # CPU: no @torch.compile
    assert len(G.shape) == 2
    a, b, c = (3.4445, -4.7750,  2.0315)
    X = G.bfloat16()
    X /= (X.norm() + eps) # ensure top singular value <= 1
    if G.size(0) > G.size(1):
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(0) > G.size(1):
        X = X.T
    return X

class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0, nesterov=False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov)
        super().__init__(params, defaults)

    def step(self):
        for group in self.param_groups:
            lr = group["lr"]
            momentum = group["momentum"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                state = self.state[p]

                if "momentum_buffer" not in state.keys():
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                g = g.add(buf, alpha=momentum) if group["nesterov"] else buf

                p.data.mul_(len(p.data)**0.5 / p.data.norm()) # normalize the weight
                update = zeropower_via_newtonschulz5(g.reshape(len(g), -1)).view(g.shape) # whiten the update
                p.data.add_(update, alpha=-lr) # take a step

#############################################
#                DataLoader                 #
#############################################

CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465))
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616))
CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


def normalize(images):  # torchvision's T.Normalize, written out (no torchvision needed)
    return (images - CIFAR_MEAN.view(1, 3, 1, 1).to(images.dtype)) / CIFAR_STD.view(1, 3, 1, 1).to(images.dtype)


def read_split(root, split):  # DATA: an image-folder tree read with PIL
    from PIL import Image
    images, labels = [], []
    for label, cls in enumerate(CLASSES):
        folder = os.path.join(root, split, cls)
        for name in sorted(os.listdir(folder)):
            with Image.open(os.path.join(folder, name)) as im:
                images.append(np.asarray(im.convert('RGB'), dtype=np.uint8))
            labels.append(label)
    return torch.tensor(np.stack(images)), torch.tensor(labels)


def batch_flip_lr(inputs):
    flip_mask = (torch.rand(len(inputs), device=inputs.device) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip_mask, inputs.flip(-1), inputs)

def batch_crop(images, crop_size):
    r = (images.size(-1) - crop_size)//2
    shifts = torch.randint(-r, r+1, size=(len(images), 2), device=images.device)
    images_out = torch.empty((len(images), 3, crop_size, crop_size), device=images.device, dtype=images.dtype)
    # The two cropping methods in this if-else produce equivalent results, but the second is faster for r > 2.
    if r <= 2:
        for sy in range(-r, r+1):
            for sx in range(-r, r+1):
                mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
                images_out[mask] = images[mask, :, r+sy:r+sy+crop_size, r+sx:r+sx+crop_size]
    else:
        images_tmp = torch.empty((len(images), 3, crop_size, crop_size+2*r), device=images.device, dtype=images.dtype)
        for s in range(-r, r+1):
            mask = (shifts[:, 0] == s)
            images_tmp[mask] = images[mask, :, r+s:r+s+crop_size, :]
        for s in range(-r, r+1):
            mask = (shifts[:, 1] == s)
            images_out[mask] = images_tmp[mask, :, :, r+s:r+s+crop_size]
    return images_out

class CifarLoader:

    def __init__(self, images, labels, train=True, batch_size=500, aug=None):
        # DATA: arrays from read_split instead of torchvision's CIFAR10 download
        self.images, self.labels = images, labels
        # CPU: float32 here (autocast computes in bfloat16) instead of .half()
        self.images = (self.images.float() / 255).permute(0, 3, 1, 2).to(memory_format=torch.channels_last)

        self.normalize = normalize
        self.proc_images = {} # Saved results of image processing to be done on the first epoch
        self.epoch = 0

        self.aug = aug or {}
        for k in self.aug.keys():
            assert k in ["flip", "translate"], "Unrecognized key: %s" % k

        self.batch_size = batch_size
        self.drop_last = train
        self.shuffle = train

    def __len__(self):
        return len(self.images)//self.batch_size if self.drop_last else ceil(len(self.images)/self.batch_size)

    def __iter__(self):

        if self.epoch == 0:
            images = self.proc_images["norm"] = self.normalize(self.images)
            # Pre-flip images in order to do every-other epoch flipping scheme
            if self.aug.get("flip", False):
                images = self.proc_images["flip"] = batch_flip_lr(images)
            # Pre-pad images to save time when doing random translation
            pad = self.aug.get("translate", 0)
            if pad > 0:
                self.proc_images["pad"] = F.pad(images, (pad,)*4, "reflect")

        if self.aug.get("translate", 0) > 0:
            images = batch_crop(self.proc_images["pad"], self.images.shape[-2])
        elif self.aug.get("flip", False):
            images = self.proc_images["flip"]
        else:
            images = self.proc_images["norm"]
        # Flip all images together every other epoch. This increases diversity relative to random flipping
        if self.aug.get("flip", False):
            if self.epoch % 2 == 1:
                images = images.flip(-1)

        self.epoch += 1

        indices = (torch.randperm if self.shuffle else torch.arange)(len(images), device=images.device)
        for i in range(len(self)):
            idxs = indices[i*self.batch_size:(i+1)*self.batch_size]
            yield (images[idxs], self.labels[idxs])

#############################################
#            Network Definition             #
#############################################

# note the use of low BatchNorm stats momentum
class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, momentum=0.6, eps=1e-12):
        super().__init__(num_features, eps=eps, momentum=1-momentum)
        self.weight.requires_grad = False
        # Note that PyTorch already initializes the weights to one and bias to zero

class Conv(nn.Conv2d):
    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])

class ConvGroup(nn.Module):
    def __init__(self, channels_in, channels_out):
        super().__init__()
        self.conv1 = Conv(channels_in,  channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x)
        x = self.norm1(x)
        x = self.activ(x)
        x = self.conv2(x)
        x = self.norm2(x)
        x = self.activ(x)
        return x

class CifarNet(nn.Module):
    def __init__(self):
        super().__init__()
        widths = dict(block1=64, block2=256, block3=256)
        whiten_kernel_size = 2
        whiten_width = 2 * 3 * whiten_kernel_size**2
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel_size, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.layers = nn.Sequential(
            nn.GELU(),
            ConvGroup(whiten_width,     widths["block1"]),
            ConvGroup(widths["block1"], widths["block2"]),
            ConvGroup(widths["block2"], widths["block3"]),
            nn.MaxPool2d(3),
        )
        self.head = nn.Linear(widths["block3"], 10, bias=False)
        # CPU: every module stays float32 (autocast computes in bfloat16), no .half()

    def reset(self):
        for m in self.modules():
            if type(m) in (nn.Conv2d, Conv, BatchNorm, nn.Linear):
                m.reset_parameters()
        w = self.head.weight.data
        w *= 1 / w.std()

    def init_whiten(self, train_images, eps=5e-4):
        c, (h, w) = train_images.shape[1], self.whiten.weight.shape[2:]
        patches = train_images.unfold(2,h,1).unfold(3,w,1).transpose(1,3).reshape(-1,c,h,w).float()
        patches_flat = patches.view(len(patches), -1)
        est_patch_covariance = (patches_flat.T @ patches_flat) / len(patches_flat)
        eigenvalues, eigenvectors = torch.linalg.eigh(est_patch_covariance, UPLO="U")
        eigenvectors_scaled = eigenvectors.T.reshape(-1,c,h,w) / torch.sqrt(eigenvalues.view(-1,1,1,1) + eps)
        self.whiten.weight.data[:] = torch.cat((eigenvectors_scaled, -eigenvectors_scaled))

    def forward(self, x, whiten_bias_grad=True):
        b = self.whiten.bias
        x = F.conv2d(x, self.whiten.weight, b if whiten_bias_grad else b.detach())
        x = self.layers(x)
        x = x.view(len(x), -1)
        return self.head(x) / x.size(-1)

############################################
#               Evaluation                 #
############################################

def infer(model, loader, tta_level=0):

    def infer_basic(inputs, net):
        return net(inputs).clone()

    def infer_mirror(inputs, net):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    def infer_mirror_translate(inputs, net):
        logits = infer_mirror(inputs, net)
        pad = 1
        padded_inputs = F.pad(inputs, (pad,)*4, "reflect")
        inputs_translate_list = [
            padded_inputs[:, :, 0:32, 0:32],
            padded_inputs[:, :, 2:34, 2:34],
        ]
        logits_translate_list = [infer_mirror(inputs_translate, net)
                                 for inputs_translate in inputs_translate_list]
        logits_translate = torch.stack(logits_translate_list).mean(0)
        return 0.5 * logits + 0.5 * logits_translate

    model.eval()
    test_images = loader.normalize(loader.images)
    infer_fn = [infer_basic, infer_mirror, infer_mirror_translate][tta_level]
    with torch.no_grad(), torch.autocast(**AUTOCAST):  # CPU: bfloat16 autocast
        return torch.cat([infer_fn(inputs, model).float() for inputs in test_images.split(2000)])

def evaluate(model, loader, tta_level=0):
    logits = infer(model, loader, tta_level)
    return (logits.argmax(1) == loader.labels).float().mean().item()

############################################
#                Training                  #
############################################

def main(run, model, data, epochs, max_steps=None):

    batch_size = 2000
    bias_lr = 0.053
    head_lr = 0.67
    wd = 2e-6 * batch_size

    (x_train, y_train), (x_test, y_test) = data  # DATA
    test_loader = CifarLoader(x_test, y_test, train=False, batch_size=2000)
    train_loader = CifarLoader(x_train, y_train, train=True, batch_size=batch_size, aug=dict(flip=True, translate=2))
    if run == "warmup":
        # The only purpose of the first run is to warmup the compiled model, so we can use dummy data
        train_loader.labels = torch.randint(0, 10, size=(len(train_loader.labels),), device=train_loader.labels.device)
    total_train_steps = ceil(epochs * len(train_loader))  # the epoch budget is an argument
    whiten_bias_train_steps = ceil(3 * len(train_loader))

    # Create optimizers and learning rate schedulers
    filter_params = [p for p in model.parameters() if len(p.shape) == 4 and p.requires_grad]
    norm_biases = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    param_configs = [dict(params=[model.whiten.bias], lr=bias_lr, weight_decay=wd/bias_lr),
                     dict(params=norm_biases,         lr=bias_lr, weight_decay=wd/bias_lr),
                     dict(params=[model.head.weight], lr=head_lr, weight_decay=wd/head_lr)]
    optimizer1 = torch.optim.SGD(param_configs, momentum=0.85, nesterov=True)  # CPU: no fused=True (a CUDA kernel)
    optimizer2 = Muon(filter_params, lr=0.24, momentum=0.6, nesterov=True)
    optimizers = [optimizer1, optimizer2]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]

    time_seconds = 0.0

    model.reset()
    step = 0

    # Initialize the whitening layer using training images
    start = time.perf_counter()  # CPU
    train_images = train_loader.normalize(train_loader.images[:5000])
    model.init_whiten(train_images)
    time_seconds += time.perf_counter() - start  # CPU

    for epoch in range(ceil(total_train_steps / len(train_loader))):

        ####################
        #     Training     #
        ####################

        start = time.perf_counter()  # CPU
        model.train()
        for inputs, labels in train_loader:
            with torch.autocast(**AUTOCAST):  # CPU: bfloat16 autocast
                outputs = model(inputs, whiten_bias_grad=(step < whiten_bias_train_steps))
            F.cross_entropy(outputs.float(), labels, label_smoothing=0.2, reduction="sum").backward()
            for group in optimizer1.param_groups[:1]:
                group["lr"] = group["initial_lr"] * (1 - step / whiten_bias_train_steps)
            for group in optimizer1.param_groups[1:]+optimizer2.param_groups:
                group["lr"] = group["initial_lr"] * (1 - step / total_train_steps)
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
            step += 1
            if step >= total_train_steps or (max_steps and step >= max_steps):
                break
        time_seconds += time.perf_counter() - start  # CPU
        if max_steps and step >= max_steps:
            return None, time_seconds  # CPU: the short warm-up

        ####################
        #    Evaluation    #
        ####################

        # Save the accuracy and loss from the last training batch of the epoch
        train_acc = (outputs.detach().argmax(1) == labels).float().mean().item()
        val_acc = evaluate(model, test_loader, tta_level=0)
        print(json.dumps({'run': run, 'epoch': epoch + 1, 'train_acc': train_acc,
                          'val_acc': val_acc, 'seconds_so_far': time_seconds}), flush=True)

    ####################
    #  TTA Evaluation  #
    ####################

    start = time.perf_counter()  # CPU
    tta_val_acc = evaluate(model, test_loader, tta_level=2)
    time_seconds += time.perf_counter() - start  # CPU

    return tta_val_acc, time_seconds

if __name__ == "__main__":
    process_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--data', required=True, help='image-folder tree: train/<class>/, test/<class>/')
    parser.add_argument('--epochs', type=float, default=8)
    parser.add_argument('--seeds', default='0', help='comma list, one run per seed')
    parser.add_argument('--warmup-steps', type=int, default=3)
    parser.add_argument('--json', help='write every run to this file')
    args = parser.parse_args()

    t0 = time.perf_counter()
    x_train, y_train = read_split(args.data, 'train')
    x_test, y_test = read_split(args.data, 'test')
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))  # DATA
    x_train, y_train = x_train[order], y_train[order]
    data = ((x_train, y_train), (x_test, y_test))
    print(f'read {len(x_train)} train / {len(x_test)} test images in {time.perf_counter() - t0:.1f} s', flush=True)

    model = CifarNet().to(memory_format=torch.channels_last)  # CPU: no .cuda(), no compile
    main("warmup", model, data, args.epochs, max_steps=args.warmup_steps)
    runs = []
    for seed in [int(s) for s in args.seeds.split(',')]:
        torch.manual_seed(seed)
        acc, seconds = main(seed, model, data, args.epochs)
        runs.append({'seed': seed, 'tta_val_acc': acc, 'seconds': seconds, 'epochs': args.epochs,
                     'wall_seconds_since_start': time.perf_counter() - process_start,
                     'torch': torch.__version__, 'threads': torch.get_num_threads()})
        print(json.dumps(runs[-1]), flush=True)
    accs = torch.tensor([r['tta_val_acc'] for r in runs])
    print('Mean: %.4f    Std: %.4f' % (accs.mean(), accs.std() if len(accs) > 1 else 0.0))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(runs, f, indent=2)
