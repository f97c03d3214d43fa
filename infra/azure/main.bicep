// matterflow on Azure: one Ubuntu LTS VM running the Windmill compose stack (infra/compose), a storage account
// for the matters and the database backups, and the VM's managed identity as the only way into that storage.
//
//   az group create -n matterflow -l westeurope
//   az deployment group create -g matterflow -f infra/azure/main.bicep -p @infra/azure/main.parameters.json
//
// Step by step: docs/deploy.md.

@description('Azure region; defaults to the resource group\'s.')
param location string = resourceGroup().location

@description('Short lowercase prefix for resource names (3-11 letters or digits).')
@minLength(3)
@maxLength(11)
param namePrefix string = 'matterflow'

@description('Admin user on the VM (SSH key only).')
param adminUsername string = 'matterflow'

@description('SSH public key of the admin user (ssh-ed25519 or ssh-rsa ...).')
param adminSshPublicKey string

@description('The only source range allowed to reach SSH (port 22), e.g. 203.0.113.7/32.')
param adminCidr string

@description('VM size: 8 vCPU / 32 GiB fits the compose stack\'s limits (2 default + 6 llm workers).')
param vmSize string = 'Standard_D8s_v5'

@description('Public DNS name of the instance (the A record or CNAME you create), used by Caddy and Windmill.')
param windmillDomain string

@description('Email for Let\'s Encrypt expiry notices.')
param acmeEmail string

@description('Days the nightly database backups are kept.')
@minValue(7)
param backupRetentionDays int = 35

// Storage Blob Data Contributor (built-in role).
var blobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageAccountName = take('${namePrefix}${uniqueString(resourceGroup().id)}', 24)
var subnetName = 'windmill'

// cloud-init.yaml with the compose files inlined (base64) and the parameters filled in, one step per line.
var ciCompose = replace(loadTextContent('cloud-init.yaml'), '__COMPOSE_YML_B64__', loadFileAsBase64('../compose/docker-compose.yml'))
var ciCaddy = replace(ciCompose, '__CADDYFILE_B64__', loadFileAsBase64('../compose/Caddyfile'))
var ciDockerfile = replace(ciCaddy, '__BACKUP_DOCKERFILE_B64__', loadFileAsBase64('../compose/backup/Dockerfile'))
var ciBackup = replace(ciDockerfile, '__BACKUP_SH_B64__', loadFileAsBase64('../compose/backup/backup.sh'))
var ciDomain = replace(ciBackup, '__WINDMILL_DOMAIN__', windmillDomain)
var ciEmail = replace(ciDomain, '__ACME_EMAIL__', acmeEmail)
var cloudInit = replace(ciEmail, '__STORAGE_ACCOUNT__', storageAccountName)

resource nsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${namePrefix}-nsg'
  location: location
  properties: {
    securityRules: [
      {
        name: 'allow-https'
        properties: {
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '443'
        }
      }
      {
        // ACME HTTP-01 challenge and the redirect to https; Caddy serves nothing else on 80.
        name: 'allow-http-acme'
        properties: {
          priority: 110
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '80'
        }
      }
      {
        name: 'allow-ssh-admin'
        properties: {
          priority: 120
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: adminCidr
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '22'
        }
      }
      {
        name: 'deny-other-inbound'
        properties: {
          priority: 4096
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: '${namePrefix}-vnet'
  location: location
  properties: {
    addressSpace: {
      addressPrefixes: ['10.40.0.0/16']
    }
    subnets: [
      {
        name: subnetName
        properties: {
          addressPrefix: '10.40.1.0/24'
          networkSecurityGroup: { id: nsg.id }
          // Storage traffic from this subnet goes over the Azure backbone and is what the account's firewall admits.
          serviceEndpoints: [
            { service: 'Microsoft.Storage' }
          ]
        }
      }
    ]
  }
}

resource publicIp 'Microsoft.Network/publicIPAddresses@2023-11-01' = {
  name: '${namePrefix}-ip'
  location: location
  sku: { name: 'Standard' }
  properties: {
    publicIPAllocationMethod: 'Static'
    dnsSettings: {
      // <label>.<region>.cloudapp.azure.com: a stable name to point your domain's CNAME at.
      domainNameLabel: '${namePrefix}-${uniqueString(resourceGroup().id)}'
    }
  }
}

resource nic 'Microsoft.Network/networkInterfaces@2023-11-01' = {
  name: '${namePrefix}-nic'
  location: location
  properties: {
    ipConfigurations: [
      {
        name: 'ipconfig1'
        properties: {
          subnet: { id: '${vnet.id}/subnets/${subnetName}' }
          privateIPAllocationMethod: 'Dynamic'
          publicIPAddress: { id: publicIp.id }
        }
      }
    ]
  }
}

resource vm 'Microsoft.Compute/virtualMachines@2024-03-01' = {
  name: '${namePrefix}-vm'
  location: location
  identity: { type: 'SystemAssigned' }
  properties: {
    hardwareProfile: { vmSize: vmSize }
    osProfile: {
      computerName: '${namePrefix}-vm'
      adminUsername: adminUsername
      customData: base64(cloudInit)
      linuxConfiguration: {
        disablePasswordAuthentication: true
        ssh: {
          publicKeys: [
            {
              path: '/home/${adminUsername}/.ssh/authorized_keys'
              keyData: adminSshPublicKey
            }
          ]
        }
        provisionVMAgent: true
        patchSettings: {
          patchMode: 'AutomaticByPlatform'
          assessmentMode: 'AutomaticByPlatform'
        }
      }
      // No VM extensions: cloud-init does the setup.
      allowExtensionOperations: false
    }
    securityProfile: {
      // Needs the subscription feature Microsoft.Compute/EncryptionAtHost registered once (docs/deploy.md).
      encryptionAtHost: true
      securityType: 'TrustedLaunch'
      uefiSettings: {
        secureBootEnabled: true
        vTpmEnabled: true
      }
    }
    storageProfile: {
      imageReference: {
        publisher: 'Canonical'
        offer: 'ubuntu-24_04-lts'
        sku: 'server'
        version: 'latest'
      }
      osDisk: {
        createOption: 'FromImage'
        diskSizeGB: 128
        managedDisk: { storageAccountType: 'Premium_LRS' }
        deleteOption: 'Delete'
      }
    }
    networkProfile: {
      networkInterfaces: [
        { id: nic.id, properties: { deleteOption: 'Delete' } }
      ]
    }
    diagnosticsProfile: {
      bootDiagnostics: { enabled: true }
    }
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_59: the VM reaches the account through a VNet service endpoint, which works only with public network access enabled; networkAcls deny every other source
  // checkov:skip=CKV_AZURE_43: the name is computed (prefix + uniqueString, cut to 24) and cannot be checked statically; the prefix parameter is limited to 11 characters
  name: storageAccountName
  location: location
  kind: 'StorageV2'
  // Zone- and geo-redundant: the matters' documents and results, and the only database backups.
  sku: { name: 'Standard_GZRS' }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    // Only Entra ID (the VM's managed identity, your az login): no account keys, no SAS.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
      virtualNetworkRules: [
        {
          id: '${vnet.id}/subnets/${subnetName}'
          action: 'Allow'
        }
      ]
      ipRules: []
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: { enabled: true, keyType: 'Account' }
        file: { enabled: true, keyType: 'Account' }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    isVersioningEnabled: true
    deleteRetentionPolicy: { enabled: true, days: 30 }
    containerDeleteRetentionPolicy: { enabled: true, days: 30 }
  }
}

resource mattersContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'matters'
  properties: { publicAccess: 'None' }
}

resource backupsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'backups'
  properties: { publicAccess: 'None' }
}

resource backupRetention 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-database-backups'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: ['blockBlob']
              prefixMatch: ['backups/windmill/']
            }
            actions: {
              baseBlob: { delete: { daysAfterModificationGreaterThan: backupRetentionDays } }
              version: { delete: { daysAfterCreationGreaterThan: backupRetentionDays } }
            }
          }
        }
      ]
    }
  }
}

resource vmBlobAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, vm.id, blobDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId)
    principalId: vm.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

output publicIpAddress string = publicIp.properties.ipAddress
output azureDnsName string = publicIp.properties.dnsSettings.fqdn
output storageAccountName string = storage.name
output vmPrincipalId string = vm.identity.principalId
output sshCommand string = 'ssh ${adminUsername}@${publicIp.properties.ipAddress}'
